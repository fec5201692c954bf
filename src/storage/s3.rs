//! The object-store driver: objects in an S3-compatible bucket (AWS S3,
//! Garage, Ceph RGW, MinIO) through the `object_store` crate, or in any
//! other `object_store` backend with multipart uploads.
//!
//! How the contract maps onto an object store:
//! - `put` and `get` are single PUTs and GETs (a PUT is atomic);
//! - an assembly is a multipart upload of the object, created when it
//!   starts so that its id is recorded before any byte is sent (see
//!   [`assembly`]); finishing it completes the upload;
//! - `rename` is a server-side copy, then a delete of the source;
//! - `list` is a delimited listing; names starting with `.` are the
//!   driver's own (an assembly's pending bytes) and never listed;
//! - `delete` of a prefix lists it and deletes what it holds;
//! - `put_if` sends `If-None-Match: *` or `If-Match: <etag>`, which AWS S3,
//!   MinIO and Ceph honour and Garage ignores: whether the store honours
//!   them is asked of it at start ([`S3Driver::check`] writes the same new
//!   object twice, conditionally) unless the configuration says, and where
//!   it does not, `put_if` checks then writes (last writer wins).
//!
//! Keys are validated as every driver validates them
//! ([`valid_key`](super::driver::valid_key)), so both accept the same keys.

mod assembly;
mod ranged;

use ranged::ReadAhead;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::driver::{
    Assembler, Assembly, ByteStream, Driver, DriverError, Meta, PlainGet, PlainGets, Precondition,
    Redirects, RelayPlan, Result, Version, valid_key,
};

/// How assemblies are cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// Bytes per part (the last excepted). S3 wants at least 5 MiB.
    pub size: usize,
    /// Parts one assembler uploads at once.
    pub in_flight: usize,
}

impl PartLimits {
    /// What one assembler holds: a part filling and those in flight.
    pub fn memory(&self) -> usize {
        self.size * (self.in_flight + 1)
    }
}

impl Default for PartLimits {
    /// 8 MiB parts, 2 at once: 24 MiB per upload, so that a replica
    /// pushing 1 GiB stays under 64 MiB resident (with 3 at once: 66 MiB,
    /// 2026-12-03). S3's 10,000 parts make 78 GiB the largest blob.
    fn default() -> Self {
        Self {
            size: 8 << 20,
            in_flight: 2,
        }
    }
}

/// What the driver needs of an object store: objects, and multipart
/// uploads whose id and parts survive the process that made them.
struct Store {
    objects: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    /// Prepended to every key (`<prefix>/<key>`); empty for none.
    prefix: String,
    parts: PartLimits,
}

pub struct S3Driver {
    store: Arc<Store>,
    /// Whether the store honours conditional writes (see the module
    /// comment); settled by [`S3Driver::check`] when `Probe`.
    conditional: std::sync::atomic::AtomicBool,
    conditional_writes: ConditionalWrites,
    /// Pulls are redirected to presigned URLs valid this long; `None`
    /// streams them through the gateway.
    redirect: Option<(Arc<dyn object_store::signer::Signer>, Duration)>,
    /// How large reads are split into ranges fetched at once.
    read_ahead: ReadAhead,
    /// Set for a plain-HTTP endpoint: reads the server relays from the
    /// store's own answers (see [`PlainSigner`]).
    plain: Option<Arc<PlainSigner>>,
}

/// How long a signed plain GET is valid: it is sent as soon as it is
/// signed, so this only has to cover a clock a little ahead of ours.
const PLAIN_GET_EXPIRY: Duration = Duration::from_secs(300);

/// Signs the GETs of reads relayed with `splice(2)`: for a store on plain
/// HTTP only, since a TLS connection's bytes cannot be spliced. Why: a
/// blob streamed through the driver is copied from the store's socket
/// into memory and again into the client's, which on a gateway sharing
/// two cores with Garage cost 0.6 CPU-seconds per GiB pulled (2026-12-08),
/// CPU the store needed.
struct PlainSigner {
    store: Arc<Store>,
    signer: Arc<dyn object_store::signer::Signer>,
    plan: RelayPlan,
}

#[async_trait]
impl PlainGets for PlainSigner {
    async fn signed_get(&self, key: &str) -> Result<PlainGet> {
        let path = self.store.path(key)?;
        let url = self
            .signer
            .signed_url(object_store::signer::Method::GET, &path, PLAIN_GET_EXPIRY)
            .await
            .map_err(|e| store_error(key, e))?;
        let unusable = || DriverError::Unavailable(format!("{key}: a signed URL without a host"));
        let host = url.host_str().ok_or_else(unusable)?;
        let port = url.port_or_known_default().ok_or_else(unusable)?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(PlainGet {
            authority: format!("{host}:{port}"),
            target,
        })
    }

    fn plan(&self) -> &RelayPlan {
        &self.plan
    }
}

/// Whether to rely on the store's conditional writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// Ask the store at start.
    #[default]
    Probe,
    /// It honours them (no probe).
    On,
    /// It does not: check, then write.
    Off,
}

/// Where an S3 bucket is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `http(s)://host:port`; `None` for AWS itself (from the region).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Keys are stored under it; empty for the bucket's root.
    pub prefix: String,
    /// `None` to take the usual AWS environment variables.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `host:port/bucket/key` rather than `bucket.host:port/key`: what
    /// self-hosted stores want.
    pub path_style: bool,
    /// Longest silence on a connection (a read of a response, a write of a
    /// request body) before the request fails.
    pub io_timeout: Duration,
    pub parts: PartLimits,
    pub conditional_writes: ConditionalWrites,
    /// Blob pulls answered with a `307` to a presigned URL valid this
    /// long, so the bytes go from the store to the client; `None`: streamed
    /// through Portcullis.
    pub redirect_pulls: Option<Duration>,
    /// Ranges (of `parts.size`) a read fetches ahead of the one it sends; 0
    /// for one GET per read.
    pub reads_ahead: usize,
    /// The most all reads hold fetched ahead, in bytes.
    pub read_memory: usize,
    /// With a plain-HTTP endpoint, reads are signed for the server to relay
    /// ([`PlainSigner`]).
    pub relay_pulls: bool,
}

impl S3Driver {
    /// A driver on the bucket `options` names. Nothing is sent yet: the
    /// first request tells whether the bucket is there (see
    /// [`S3Driver::check`]).
    pub fn new(options: &S3Options) -> std::result::Result<Self, String> {
        use object_store::ClientOptions;
        use object_store::aws::AmazonS3Builder;
        let plain_http = options
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        // No limit on a whole request: a blob's GET streams for as long as
        // the client takes to read it. Silence is what is bounded.
        // A few quick retries, then an answer: a client waiting minutes on
        // a store that is down would rather hear 503 and retry itself.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..object_store::RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(Duration::from_secs(5))
            .with_read_timeout(options.io_timeout)
            .with_allow_http(plain_http);
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_virtual_hosted_style_request(!options.path_style)
            .with_allow_http(plain_http)
            .with_retry(retry)
            .with_client_options(client);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = Arc::new(builder.build().map_err(|e| e.to_string())?);
        let mut driver = Self::with_store(s3.clone(), s3.clone(), &options.prefix, options.parts)
            .with_read_ahead(options.reads_ahead, options.read_memory);
        driver.conditional_writes = options.conditional_writes;
        if plain_http && options.relay_pulls {
            driver.plain = Some(Arc::new(PlainSigner {
                store: Arc::clone(&driver.store),
                signer: s3.clone(),
                plan: driver.read_ahead.plan(options.io_timeout),
            }));
        }
        driver.redirect = options
            .redirect_pulls
            .map(|expiry| (s3 as Arc<dyn object_store::signer::Signer>, expiry));
        Ok(driver)
    }

    /// A driver on any `object_store` backend with multipart uploads (the
    /// in-memory store in tests).
    pub fn with_store(
        objects: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        prefix: &str,
        parts: PartLimits,
    ) -> Self {
        Self {
            store: Arc::new(Store {
                objects,
                multipart,
                prefix: prefix.trim_matches('/').to_owned(),
                parts: PartLimits {
                    size: parts.size.max(1),
                    in_flight: parts.in_flight.max(1),
                },
            }),
            conditional: std::sync::atomic::AtomicBool::new(false),
            conditional_writes: ConditionalWrites::Probe,
            redirect: None,
            read_ahead: ReadAhead::off(),
            plain: None,
        }
    }

    /// Reads of more than a part fetch `ranges` parts ahead of the one they
    /// send, holding at most `memory` bytes in all (see [`ReadAhead`]).
    pub fn with_read_ahead(mut self, ranges: usize, memory: usize) -> Self {
        self.read_ahead = ReadAhead::new(self.store.parts.size, ranges, memory);
        self
    }

    /// As configured, or what the probe at [`S3Driver::check`] found.
    fn honours_conditions(&self) -> bool {
        match self.conditional_writes {
            ConditionalWrites::On => true,
            ConditionalWrites::Off => false,
            ConditionalWrites::Probe => self.conditional.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Writes a new object of the driver's own twice, the second time only
    /// if absent: a store that lets the second write through ignores
    /// conditions.
    async fn probe_conditional_writes(&self) -> std::result::Result<bool, String> {
        let probe = self
            .store
            .own_path(&format!(".probe-{}", uuid::Uuid::new_v4().simple()));
        let create = || PutOptions::from(PutMode::Create);
        let objects = &self.store.objects;
        objects
            .put_opts(&probe, PutPayload::from_static(b"1"), create())
            .await
            .map_err(|e| e.to_string())?;
        let second = objects
            .put_opts(&probe, PutPayload::from_static(b"2"), create())
            .await;
        let _ = objects.delete(&probe).await;
        match second {
            Ok(_) => Ok(false),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(true),
            // Refused outright (a store that rejects the header): not honoured.
            Err(_) => Ok(false),
        }
    }

    /// Asks the store for one listing, so that a wrong endpoint, bucket or
    /// key fails at start rather than at the first push.
    /// Probes conditional writes too, when so configured.
    pub async fn check(&self) -> std::result::Result<(), String> {
        let root = self.store.root();
        if let Err(e) = self.store.objects.list_with_delimiter(root.as_ref()).await {
            return Err(e.to_string());
        }
        if self.conditional_writes == ConditionalWrites::Probe {
            let honoured = self.probe_conditional_writes().await?;
            self.conditional
                .store(honoured, std::sync::atomic::Ordering::Relaxed);
            if !honoured {
                tracing::warn!(
                    "the S3 store ignores conditional writes: where two replicas write one object at once, the last one wins"
                );
            }
        }
        Ok(())
    }
}

impl Store {
    fn root(&self) -> Option<Path> {
        (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()))
    }

    /// The object path of a key, refusing what every driver refuses
    /// ([`valid_key`]).
    fn path(&self, key: &str) -> Result<Path> {
        if !valid_key(key) {
            return Err(DriverError::InvalidKey(key.to_owned()));
        }
        Ok(self.own_path(key))
    }

    /// The object path of a key the driver made itself (`.`-names).
    fn own_path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// Maps a store's error on `key` to the driver's.
fn store_error(key: &str, e: object_store::Error) -> DriverError {
    match e {
        object_store::Error::NotFound { .. } => DriverError::NotFound(key.to_owned()),
        object_store::Error::InvalidPath { .. } => DriverError::InvalidKey(key.to_owned()),
        e => DriverError::Unavailable(format!("{key}: {e}")),
    }
}

#[async_trait]
impl Redirects for S3Driver {
    async fn presigned_get(&self, key: &str) -> Result<String> {
        let path = self.store.path(key)?;
        let (signer, expiry) = self
            .redirect
            .as_ref()
            .ok_or_else(|| DriverError::InvalidKey(format!("{key}: pulls are not redirected")))?;
        signer
            .signed_url(object_store::signer::Method::GET, &path, *expiry)
            .await
            .map(|url| url.to_string())
            .map_err(|e| store_error(key, e))
    }
}

#[async_trait]
impl Driver for S3Driver {
    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.store.path(key)?;
        let got = self.store.objects.get(&path).await;
        got.map_err(|e| store_error(key, e))?
            .bytes()
            .await
            .map_err(|e| store_error(key, e))
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, Version)> {
        let path = self.store.path(key)?;
        let got = self
            .store
            .objects
            .get(&path)
            .await
            .map_err(|e| store_error(key, e))?;
        let etag = got.meta.e_tag.clone().unwrap_or_default();
        let bytes = got.bytes().await.map_err(|e| store_error(key, e))?;
        Ok((bytes, Version(etag)))
    }

    async fn put_if(&self, key: &str, content: Bytes, condition: Precondition) -> Result<()> {
        let path = self.store.path(key)?;
        let failed = || DriverError::PreconditionFailed(key.to_owned());
        if !self.honours_conditions() {
            let current = match self.store.objects.head(&path).await {
                Ok(meta) => Some(meta.e_tag.unwrap_or_default()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(store_error(key, e)),
            };
            let holds = match &condition {
                Precondition::Absent => current.is_none(),
                Precondition::Matches(Version(etag)) => current.as_ref() == Some(etag),
            };
            if !holds {
                return Err(failed());
            }
            return self.put(key, content).await;
        }
        let mode = match condition {
            Precondition::Absent => PutMode::Create,
            Precondition::Matches(Version(etag)) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag),
                version: None,
            }),
        };
        match self
            .store
            .objects
            .put_opts(
                &path,
                PutPayload::from_bytes(content),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => Err(failed()),
            Err(e) => Err(store_error(key, e)),
        }
    }

    fn conditional_writes(&self) -> bool {
        self.honours_conditions()
    }

    async fn put(&self, key: &str, content: Bytes) -> Result<()> {
        let path = self.store.path(key)?;
        self.store
            .objects
            .put(&path, PutPayload::from_bytes(content))
            .await
            .map(drop)
            .map_err(|e| store_error(key, e))
    }

    async fn read(&self, key: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let path = self.store.path(key)?;
        if len == Some(0) {
            // S3 refuses an empty range; nothing is what was asked.
            self.stat(key).await?;
            return Ok(futures_util::stream::empty().boxed());
        }
        let range = self.read_ahead.first(offset, len);
        let ranged = range.is_some();
        let options = GetOptions {
            range,
            ..GetOptions::default()
        };
        let result = match self.store.objects.get_opts(&path, options).await {
            Ok(result) => result,
            // A range from the very end (of an empty object, too) is empty,
            // which S3 (and the in-memory store) refuse to serve as a range.
            Err(e) if ranged => {
                return match self.stat(key).await {
                    Ok(meta) if meta.size <= offset => Ok(futures_util::stream::empty().boxed()),
                    _ => Err(store_error(key, e)),
                };
            }
            Err(e) => return Err(store_error(key, e)),
        };
        Ok(self.read_ahead.read(
            Arc::clone(&self.store.objects),
            path,
            result,
            len,
            Arc::from(key),
        ))
    }

    async fn stat(&self, key: &str) -> Result<Meta> {
        let path = self.store.path(key)?;
        let meta = self
            .store
            .objects
            .head(&path)
            .await
            .map_err(|e| store_error(key, e))?;
        Ok(Meta {
            size: meta.size,
            modified: latest_in_second(meta.last_modified.into()),
        })
    }

    async fn start_assembly(&self, key: &str) -> Result<Assembly> {
        let path = self.store.path(key)?;
        assembly::start(&self.store, key, &path).await
    }

    async fn assemble(&self, key: &str, from: &Assembly) -> Result<Box<dyn Assembler>> {
        let path = self.store.path(key)?;
        Ok(Box::new(
            assembly::S3Assembler::open(Arc::clone(&self.store), key, path, from).await?,
        ))
    }

    async fn finish_assembly(&self, key: &str, state: &Assembly) -> Result<()> {
        let path = self.store.path(key)?;
        assembly::finish(&self.store, key, &path, state).await
    }

    async fn discard_assembly(&self, key: &str, state: &Assembly) -> Result<()> {
        let path = self.store.path(key)?;
        assembly::discard(&self.store, key, &path, state).await
    }

    fn assembly_memory(&self) -> usize {
        self.store.parts.memory()
    }

    fn redirects(&self) -> Option<&dyn Redirects> {
        self.redirect.is_some().then_some(self as &dyn Redirects)
    }

    fn plain_gets(&self) -> Option<Arc<dyn PlainGets>> {
        self.plain.clone().map(|plain| plain as Arc<dyn PlainGets>)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.store.path(prefix)?;
        let listed = self
            .store
            .objects
            .list_with_delimiter(Some(&path))
            .await
            .map_err(|e| store_error(prefix, e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename())
            .filter(|name| !name.starts_with('.'))
            .map(str::to_owned)
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Err(DriverError::NotFound(prefix.to_owned()));
        }
        Ok(names)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let source = self.store.path(from)?;
        let target = self.store.path(to)?;
        // The copy is whole or absent at the target; only then does the
        // source go.
        self.store
            .objects
            .copy(&source, &target)
            .await
            .map_err(|e| store_error(from, e))?;
        self.store
            .objects
            .delete(&source)
            .await
            .map_err(|e| store_error(from, e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.store.path(key)?;
        match self.store.objects.head(&path).await {
            Ok(_) => {
                return self
                    .store
                    .objects
                    .delete(&path)
                    .await
                    .map_err(|e| store_error(key, e));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(key, e)),
        }
        let under: Vec<Path> = self
            .store
            .objects
            .list(Some(&path))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| store_error(key, e))?;
        if under.is_empty() {
            return Err(DriverError::NotFound(key.to_owned()));
        }
        let locations = futures_util::stream::iter(under.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.objects.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                // Gone meanwhile (a concurrent delete): what was asked.
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(key, e)),
            }
        }
        Ok(())
    }
}

/// S3 gives an object's time in whole seconds (`Last-Modified`), cut down:
/// the object may have been written up to a second later. What it was
/// written by is asked so that nothing younger than an age goes (garbage
/// collection's grace period, an idle upload's limit), so the latest time
/// the object could have been written is the one to answer with.
fn latest_in_second(at: std::time::SystemTime) -> std::time::SystemTime {
    let whole = at
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|since| since.subsec_nanos() == 0);
    match whole {
        true => at + std::time::Duration::from_millis(999),
        false => at,
    }
}
