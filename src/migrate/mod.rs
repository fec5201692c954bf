//! The way off v1: every repository and tag of a legacy registry copied
//! into the built-in v2 storage as Docker schema 2 images
//! (`portcullis migrate --from-v1`).
//!
//! Three passes. The plan reads the backend's metadata (repositories, tags,
//! ancestries, image JSON), which is small. Then each legacy image's layer
//! is copied once, however many tags share it ([`layer`]): streamed from
//! the backend, checked against the backend's own checksum, stored as a
//! blob, and only then recorded (`storage::MigratedLayer`). Last, each tag
//! gets its config and manifest ([`image`]), built deterministically, so a
//! tag already pointing at them is left alone.
//!
//! That is what makes the migration resumable and idempotent: an
//! interrupted run leaves whole blobs and their records, or nothing (a
//! half-copied layer is an upload session, which the sweep removes); the
//! next run skips every recorded layer and every tag already in place, and
//! a run after a complete one copies nothing. A v2 tag that holds something
//! else (pushed over v2 since) is never overwritten unless asked.

pub mod image;
pub mod layer;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::reference::{Algorithm, Digest, ImageId, Reference, RepoName, Tag};
use crate::storage::{Chunk, MigratedLayer, Storage, StorageError};
use image::{Ancestor, MANIFEST_MEDIA_TYPE};
use layer::{Converter, GZIP_LAYER};
pub use source::Legacy;
use source::{ImageJson, SourceError};

/// What to migrate, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repository patterns (`team/**`, `library/*`); none: every repository.
    /// A pattern without `*` names one repository, which then need not be
    /// in the backend's search index.
    pub repos: Vec<String>,
    /// Layers copied at once.
    pub jobs: usize,
    /// Replace a v2 tag that points at something else.
    pub overwrite: bool,
    /// Keep v1's `library/` prefix on v2 (by default `library/busybox`
    /// becomes `busybox`, the name engines ask v2 for).
    pub keep_library: bool,
}

/// What happens, as it happens (the command line draws it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The plan: tags to migrate, layers to copy and their bytes (as far as
    /// the backend said), layers already copied by an earlier run.
    Planned {
        tags: usize,
        layers: usize,
        bytes: u64,
        recorded: usize,
    },
    /// Bytes of a layer read from the backend.
    Read(u64),
    LayerCopied {
        image: String,
        bytes: u64,
        digest: String,
    },
    TagMigrated {
        repo: String,
        tag: String,
        digest: String,
    },
    /// The tag holds what the migration makes of it already.
    TagCurrent {
        repo: String,
        tag: String,
    },
    TagSkipped {
        repo: String,
        tag: String,
        why: String,
    },
    Failed {
        what: String,
        why: String,
    },
}

pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub layers_copied: usize,
    pub bytes_copied: u64,
    /// Layers an earlier run had copied already.
    pub layers_skipped: usize,
    pub tags_migrated: Vec<(String, String)>,
    /// Tags an earlier run had migrated already.
    pub tags_current: usize,
    /// `(repository:tag, why)`.
    pub tags_skipped: Vec<(String, String)>,
    /// `(what, why)`: repositories, tags or layers that could not be copied.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Pattern(String),
    #[error("cannot list the legacy registry's repositories: {0}")]
    Listing(SourceError),
}

/// One tag to migrate: where, and its images base first.
struct Planned {
    repo: RepoName,
    tag: Tag,
    ancestry: Vec<ImageId>,
}

/// Copies what `options` selects from `source` into `storage`.
pub async fn migrate(
    source: &Legacy,
    storage: &Storage,
    options: &Options,
    events: Events,
) -> Result<Report, MigrateError> {
    let mut report = Report::default();
    let fail = |report: &mut Report, what: String, why: String| {
        events(Event::Failed {
            what: what.clone(),
            why: why.clone(),
        });
        report.failed.push((what, why));
    };

    // The plan.
    let repos = select(source, &options.repos).await?;
    let mut plan: Vec<Planned> = Vec::new();
    let mut ancestries: HashMap<String, Vec<ImageId>> = HashMap::new();
    for name in repos {
        let Ok(repo) = RepoName::parse(&v2_name(&name, options.keep_library)) else {
            fail(&mut report, name, "not a valid v2 repository name".into());
            continue;
        };
        let tags = match source.tags(&name).await {
            Ok(tags) => tags,
            Err(e) => {
                fail(&mut report, name, e.to_string());
                continue;
            }
        };
        for (tag, top) in tags {
            let what = format!("{repo}:{tag}");
            let Ok(tag) = Tag::parse(&tag) else {
                fail(&mut report, what, "not a valid v2 tag".into());
                continue;
            };
            let ancestry = match ancestries.get(&top) {
                Some(known) => known.clone(),
                None => match ancestry(source, &top).await {
                    Ok(ids) => {
                        ancestries.insert(top.clone(), ids.clone());
                        ids
                    }
                    Err(why) => {
                        fail(&mut report, what, why);
                        continue;
                    }
                },
            };
            plan.push(Planned {
                repo: repo.clone(),
                tag,
                ancestry,
            });
        }
    }

    // Every image once, with the first repository that needs it.
    let mut images: BTreeMap<ImageId, RepoName> = BTreeMap::new();
    for planned in &plan {
        for id in &planned.ancestry {
            images
                .entry(id.clone())
                .or_insert_with(|| planned.repo.clone());
        }
    }
    let mut jsons: HashMap<ImageId, Arc<ImageJson>> = HashMap::new();
    let mut broken: HashMap<ImageId, String> = HashMap::new();
    let mut layers: HashMap<ImageId, MigratedLayer> = HashMap::new();
    let mut to_copy: Vec<(ImageId, RepoName)> = Vec::new();
    let mut bytes = 0;
    for (id, repo) in &images {
        match source.image_json(id.as_str()).await {
            Ok(json) => {
                match storage.migrated_layer(id).await {
                    Ok(Some(layer)) => {
                        layers.insert(id.clone(), layer);
                    }
                    Ok(None) => {
                        bytes += json.layer_size.unwrap_or(0);
                        to_copy.push((id.clone(), repo.clone()));
                    }
                    Err(e) => {
                        broken.insert(id.clone(), format!("storage: {e}"));
                    }
                }
                jsons.insert(id.clone(), Arc::new(json));
            }
            Err(e) => {
                broken.insert(id.clone(), e.to_string());
            }
        }
    }
    report.layers_skipped = layers.len();
    events(Event::Planned {
        tags: plan.len(),
        layers: to_copy.len(),
        bytes,
        recorded: layers.len(),
    });

    // The layers, `jobs` at a time.
    // Each copy is reported as it ends, so that what an interrupted run had
    // finished is on screen.
    let mut copies = futures_util::stream::iter(to_copy.into_iter().map(|(id, repo)| {
        let json = jsons[&id].clone();
        let events = events.clone();
        async move {
            let copied = copy_layer(source, storage, &id, &repo, &json, events).await;
            (id, copied)
        }
    }))
    .buffer_unordered(options.jobs.max(1));
    while let Some((id, copied)) = copies.next().await {
        match copied {
            Ok(layer) => {
                report.layers_copied += 1;
                report.bytes_copied += layer.size;
                events(Event::LayerCopied {
                    image: id.to_string(),
                    bytes: layer.size,
                    digest: layer.digest.to_string(),
                });
                layers.insert(id, layer);
            }
            Err(why) => {
                fail(&mut report, format!("image {id}"), why.clone());
                broken.insert(id, why);
            }
        }
    }

    // The tags.
    for planned in &plan {
        let what = format!("{}:{}", planned.repo, planned.tag);
        if let Some((id, _)) = planned
            .ancestry
            .iter()
            .find_map(|id| broken.get(id).map(|why| (id, why)))
        {
            fail(&mut report, what, format!("image {id} was not copied"));
            continue;
        }
        match put_tag(storage, planned, &jsons, &layers, options.overwrite).await {
            Ok(TagOutcome::Migrated(digest)) => {
                events(Event::TagMigrated {
                    repo: planned.repo.to_string(),
                    tag: planned.tag.to_string(),
                    digest: digest.to_string(),
                });
                report
                    .tags_migrated
                    .push((planned.repo.to_string(), planned.tag.to_string()));
            }
            Ok(TagOutcome::Current) => {
                events(Event::TagCurrent {
                    repo: planned.repo.to_string(),
                    tag: planned.tag.to_string(),
                });
                report.tags_current += 1;
            }
            Ok(TagOutcome::Skipped(why)) => {
                events(Event::TagSkipped {
                    repo: planned.repo.to_string(),
                    tag: planned.tag.to_string(),
                    why: why.clone(),
                });
                report.tags_skipped.push((what, why));
            }
            Err(why) => fail(&mut report, what, why),
        }
    }
    Ok(report)
}

/// The repositories `patterns` select.
async fn select(source: &Legacy, patterns: &[String]) -> Result<Vec<String>, MigrateError> {
    let globs = patterns
        .iter()
        .map(|p| crate::policy::RepoPattern::parse(p).map_err(MigrateError::Pattern))
        .collect::<Result<Vec<_>, _>>()?;
    // Names alone need no listing: the backend may have no search index.
    if !globs.is_empty() && globs.iter().all(|g| g.literal().is_some()) {
        let mut names: Vec<String> = globs
            .iter()
            .filter_map(|g| g.literal())
            .map(|name| library(&name))
            .collect();
        names.sort();
        names.dedup();
        return Ok(names);
    }
    let all = source.repositories().await.map_err(MigrateError::Listing)?;
    Ok(all
        .into_iter()
        .filter(|name| {
            // `busybox*` selects `library/busybox`, as the v1 name does.
            let short = name.strip_prefix("library/").filter(|s| !s.contains('/'));
            globs.is_empty()
                || globs
                    .iter()
                    .any(|g| g.matches(name) || short.is_some_and(|s| g.matches(s)))
        })
        .collect())
}

/// Where a v1 repository goes on v2. An engine's `docker pull
/// host/busybox` asked the v1 backend for `library/busybox`, and asks v2
/// for `busybox`: so that the same reference pulls the same image after the
/// move, `library/x` becomes `x` unless the prefix is to be kept.
fn v2_name(v1: &str, keep_library: bool) -> String {
    match v1.strip_prefix("library/") {
        Some(short) if !keep_library && !short.contains('/') => short.to_owned(),
        _ => v1.to_owned(),
    }
}

/// A single-segment v1 name is the `library/` repository, as the backend
/// stores it.
fn library(name: &str) -> String {
    match name.contains('/') {
        true => name.to_owned(),
        false => format!("library/{name}"),
    }
}

/// The ancestry of `top`, base first, checked to be image ids.
async fn ancestry(source: &Legacy, top: &str) -> Result<Vec<ImageId>, String> {
    let mut ids = source.ancestry(top).await.map_err(|e| e.to_string())?;
    if ids.first().map(String::as_str) != Some(top) {
        return Err(format!("the ancestry of {top} does not start with it"));
    }
    ids.reverse();
    ids.iter()
        .map(|id| ImageId::parse(id).ok_or_else(|| format!("{id:?} is not an image id")))
        .collect()
}

/// Streams one layer from the backend into a blob of `repo`, checks it,
/// and records it.
async fn copy_layer(
    source: &Legacy,
    storage: &Storage,
    id: &ImageId,
    repo: &RepoName,
    json: &ImageJson,
    events: Events,
) -> Result<MigratedLayer, String> {
    let body = source.layer(id.as_str()).await.map_err(|e| e.to_string())?;
    let upload = storage
        .upload_start(repo, None)
        .await
        .map_err(|e| format!("storage: {e}"))?;
    // The converter's verdict, left by the stream when the body ends.
    let outcome: Arc<Mutex<Option<Result<layer::Converted, String>>>> = Arc::default();
    let stream = convert_stream(body, Converter::new(&json.raw), outcome.clone(), events);
    let appended = storage
        .upload_append(repo, upload, Chunk::default(), stream)
        .await;
    let converted = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
    let checked = match (appended, converted) {
        (Ok(_), Some(Ok(converted))) => check(&converted, json).map(|()| converted),
        (_, Some(Err(why))) => Err(why),
        (Err(e), _) => Err(format!("storage: {e}")),
        (Ok(_), None) => Err("the layer ended without a verdict".into()),
    };
    let converted = match checked {
        Ok(converted) => converted,
        Err(why) => {
            let _ = storage.upload_cancel(repo, upload).await;
            return Err(why);
        }
    };
    // The storage hashes the bytes once more and refuses a mismatch.
    storage
        .upload_finish(repo, upload, &converted.digest, None)
        .await
        .map_err(|e| format!("storage: {e}"))?;
    let migrated = MigratedLayer {
        digest: converted.digest,
        diff_id: converted.diff_id,
        size: converted.size,
        media_type: GZIP_LAYER.to_owned(),
        empty: converted.empty,
        repository: repo.to_string(),
    };
    storage
        .put_migrated_layer(id, &migrated)
        .await
        .map_err(|e| format!("storage: {e}"))?;
    Ok(migrated)
}

/// The layer as it must be: the backend's checksum, when it has one, over
/// the bytes that arrived.
fn check(converted: &layer::Converted, json: &ImageJson) -> Result<(), String> {
    if !json.checksums.is_empty() && !json.checksums.contains(&converted.checksum) {
        return Err(format!(
            "the layer does not match the legacy registry's checksum ({} computed, {} recorded)",
            converted.checksum,
            json.checksums.join(", ")
        ));
    }
    Ok(())
}

/// The backend's body through `converter`, as the chunks to store; the
/// verdict goes to `outcome` when the body ends or fails.
fn convert_stream(
    body: hyper::body::Incoming,
    converter: Converter,
    outcome: Arc<Mutex<Option<Result<layer::Converted, String>>>>,
    events: Events,
) -> crate::storage::ByteStream {
    let give = move |verdict: Result<layer::Converted, String>| {
        *outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
    };
    let state = Some((body, converter, give, events));
    futures_util::stream::unfold(state, |state| async move {
        let (mut body, mut converter, give, events) = state?;
        loop {
            match source::next_chunk(&mut body).await {
                Some(Ok(chunk)) => {
                    events(Event::Read(chunk.len() as u64));
                    match converter.push(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Some((Ok(out), Some((body, converter, give, events)))),
                        Err(e) => return Some((Err(refuse(&give, e.to_string())), None)),
                    }
                }
                Some(Err(e)) => {
                    let why = format!("the layer's download broke off: {e}");
                    return Some((Err(refuse(&give, why)), None));
                }
                None => {
                    return match converter.finish() {
                        Ok((tail, converted)) => {
                            give(Ok(converted));
                            (!tail.is_empty()).then_some((Ok(tail), None))
                        }
                        Err(e) => Some((Err(refuse(&give, e.to_string())), None)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// Leaves `why` as the verdict and fails the stream, so storage keeps nothing.
fn refuse(give: &impl Fn(Result<layer::Converted, String>), why: String) -> std::io::Error {
    give(Err(why.clone()));
    std::io::Error::other(why)
}

enum TagOutcome {
    Migrated(Digest),
    Current,
    Skipped(String),
}

/// Links the tag's layers into its repository and writes its config and
/// manifest, unless the tag points at them already.
async fn put_tag(
    storage: &Storage,
    planned: &Planned,
    jsons: &HashMap<ImageId, Arc<ImageJson>>,
    layers: &HashMap<ImageId, MigratedLayer>,
    overwrite: bool,
) -> Result<TagOutcome, String> {
    let repo = &planned.repo;
    let ancestors: Vec<Ancestor> = planned
        .ancestry
        .iter()
        .map(|id| Ancestor {
            json: &jsons[id].value,
            layer: &layers[id],
        })
        .collect();
    let config = Bytes::from(image::config(&ancestors)?);
    let config_digest = Algorithm::Sha256.digest_of(&config);
    let manifest = Bytes::from(image::manifest(
        (&config_digest, config.len() as u64),
        &ancestors,
    ));
    let digest = Algorithm::Sha256.digest_of(&manifest);
    let reference = Reference::Tag(planned.tag.clone());
    let storage_error = |e: StorageError| format!("storage: {e}");
    match storage.manifest_head(repo, &reference).await {
        Ok((current, _, _)) if current == digest => {
            return Ok(TagOutcome::Current);
        }
        Ok(_) if !overwrite => {
            return Ok(TagOutcome::Skipped(
                "the v2 tag holds another image (pushed since?); --overwrite replaces it".into(),
            ));
        }
        Ok(_) | Err(StorageError::ManifestUnknown(_) | StorageError::NameUnknown(_)) => {}
        Err(e) => return Err(storage_error(e)),
    }
    for ancestor in ancestors.iter().filter(|a| !a.layer.empty) {
        let layer = ancestor.layer;
        let from = RepoName::parse(&layer.repository).map_err(|e| e.to_string())?;
        if from != *repo
            && storage
                .blob_mount(&from, repo, &layer.digest)
                .await
                .map_err(storage_error)?
                .is_none()
        {
            return Err(format!(
                "layer {} is no longer linked to {from}; run the migration again",
                layer.digest
            ));
        }
    }
    if storage.blob_size(repo, &config_digest).await.is_err() {
        let body = futures_util::stream::once(async move { Ok(config) }).boxed();
        storage
            .blob_put(repo, None, &config_digest, Chunk::default(), body)
            .await
            .map_err(storage_error)?;
    }
    storage
        .manifest_put(repo, &reference, Some(MANIFEST_MEDIA_TYPE), manifest)
        .await
        .map_err(storage_error)?;
    Ok(TagOutcome::Migrated(digest))
}
