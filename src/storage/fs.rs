//! Filesystem driver (skeleton; see driver.rs for the contract).

use std::path::{Path, PathBuf};

pub struct FsDriver {
    #[allow(dead_code)]
    root: PathBuf,
}

impl FsDriver {
    pub async fn new(root: &Path) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(root).await?;
        Ok(Self {
            root: root.to_owned(),
        })
    }
}

use async_trait::async_trait;
use bytes::Bytes;

use super::driver::{Appender, ByteStream, Driver, Result};

#[async_trait]
impl Driver for FsDriver {
    async fn get(&self, _key: &str) -> Result<Bytes> {
        todo!()
    }
    async fn put(&self, _key: &str, _content: Bytes) -> Result<()> {
        todo!()
    }
    async fn read(&self, _key: &str, _offset: u64, _len: Option<u64>) -> Result<ByteStream> {
        todo!()
    }
    async fn stat(&self, _key: &str) -> Result<u64> {
        todo!()
    }
    async fn append(&self, _key: &str, _at: u64) -> Result<Box<dyn Appender>> {
        todo!()
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<String>> {
        todo!()
    }
    async fn rename(&self, _from: &str, _to: &str) -> Result<()> {
        todo!()
    }
    async fn delete(&self, _key: &str) -> Result<()> {
        todo!()
    }
}
