//! A driver that tells an [`Observer`] of every operation it passes on:
//! which, how it ended and how long it took (the storage metrics). It
//! wraps any driver and changes nothing of what it does; capabilities
//! (file ranges, redirects, signed plain GETs) are the wrapped driver's
//! own, and bytes read through them are counted when the read is opened
//! (for a relayed read, each ranged GET when it is signed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::driver::{
    Assembler, Assembly, ByteStream, Driver, DriverError, FileRanges, Meta, PlainGet, PlainGets,
    Precondition, Redirects, RelayPlan, Result, Version,
};

/// How an operation ended: absence is an answer, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Error,
}

impl Outcome {
    fn of<T>(result: &Result<T>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(DriverError::NotFound(_)) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

/// Who is told.
pub trait Observer: Send + Sync + 'static {
    fn operation(&self, operation: &'static str, outcome: Outcome, took: Duration);
}

pub struct Metered {
    inner: Arc<dyn Driver>,
    observer: Arc<dyn Observer>,
    /// The wrapped driver's, metered: made once, since a read asks for it.
    plain_gets: Option<Arc<dyn PlainGets>>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Driver>, observer: Arc<dyn Observer>) -> Self {
        let plain_gets = inner.plain_gets().map(|inner| {
            Arc::new(MeteredGets {
                inner,
                observer: Arc::clone(&observer),
            }) as Arc<dyn PlainGets>
        });
        Self {
            inner,
            observer,
            plain_gets,
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        run: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        timed(self.observer.as_ref(), operation, run).await
    }
}

/// `run`, told to `observer` as `operation`: how it ended and how long it
/// took.
async fn timed<T>(
    observer: &dyn Observer,
    operation: &'static str,
    run: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = run.await;
    observer.operation(operation, Outcome::of(&result), started.elapsed());
    result
}

#[async_trait]
impl Driver for Metered {
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, Version)> {
        self.timed("get", self.inner.get_versioned(key)).await
    }

    async fn put_if(&self, key: &str, content: Bytes, condition: Precondition) -> Result<()> {
        self.timed("put", self.inner.put_if(key, content, condition))
            .await
    }

    fn conditional_writes(&self) -> bool {
        self.inner.conditional_writes()
    }

    async fn put(&self, key: &str, content: Bytes) -> Result<()> {
        self.timed("put", self.inner.put(key, content)).await
    }

    async fn read(&self, key: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        self.timed("read", self.inner.read(key, offset, len)).await
    }

    fn file_ranges(&self) -> Option<&dyn FileRanges> {
        self.inner.file_ranges().map(|_| self as &dyn FileRanges)
    }

    fn redirects(&self) -> Option<&dyn Redirects> {
        self.inner.redirects()
    }

    fn plain_gets(&self) -> Option<Arc<dyn PlainGets>> {
        self.plain_gets.clone()
    }

    async fn stat(&self, key: &str) -> Result<Meta> {
        self.timed("stat", self.inner.stat(key)).await
    }

    async fn start_assembly(&self, key: &str) -> Result<Assembly> {
        self.timed("assemble", self.inner.start_assembly(key)).await
    }

    async fn assemble(&self, key: &str, from: &Assembly) -> Result<Box<dyn Assembler>> {
        let inner = self
            .timed("assemble", self.inner.assemble(key, from))
            .await?;
        Ok(Box::new(MeteredAssembler {
            inner,
            observer: Arc::clone(&self.observer),
        }))
    }

    async fn finish_assembly(&self, key: &str, state: &Assembly) -> Result<()> {
        self.timed("assemble", self.inner.finish_assembly(key, state))
            .await
    }

    async fn discard_assembly(&self, key: &str, state: &Assembly) -> Result<()> {
        self.timed("delete", self.inner.discard_assembly(key, state))
            .await
    }

    fn assembly_memory(&self) -> usize {
        self.inner.assembly_memory()
    }

    async fn sweep_temporaries(&self, older_than: Duration) -> Result<usize> {
        self.inner.sweep_temporaries(older_than).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.timed("list", self.inner.list(prefix)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.timed("rename", self.inner.rename(from, to)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.timed("delete", self.inner.delete(key)).await
    }
}

#[async_trait]
impl FileRanges for Metered {
    async fn file_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<super::FileRange> {
        let files = self
            .inner
            .file_ranges()
            .expect("asked only when it has them");
        self.timed("read", files.file_range(key, offset, len)).await
    }
}

/// An upload's writes: each commit (the bytes made durable) is an operation.
struct MeteredAssembler {
    inner: Box<dyn Assembler>,
    observer: Arc<dyn Observer>,
}

#[async_trait]
impl Assembler for MeteredAssembler {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<Assembly> {
        let started = Instant::now();
        let result = self.inner.commit().await;
        self.observer
            .operation("commit", Outcome::of(&result), started.elapsed());
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

/// The wrapped driver's [`PlainGets`], each signed GET counted as a read.
struct MeteredGets {
    inner: Arc<dyn PlainGets>,
    observer: Arc<dyn Observer>,
}

#[async_trait]
impl PlainGets for MeteredGets {
    async fn signed_get(&self, key: &str) -> Result<PlainGet> {
        timed(self.observer.as_ref(), "read", self.inner.signed_get(key)).await
    }

    fn plan(&self) -> &RelayPlan {
        self.inner.plan()
    }
}
