//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;

use crate::config::Config;
use crate::storage::{Storage, fs::FsDriver};

pub struct AppState {
    pub config: Config,
    pub storage: Storage,
}

impl AppState {
    /// Opens the storage the configuration names (creating the data directory
    /// on first start).
    pub async fn new(config: Config) -> std::io::Result<Arc<Self>> {
        let driver = FsDriver::new(&config.storage.root).await?;
        let storage = Storage::new(Arc::new(driver));
        Ok(Arc::new(Self { config, storage }))
    }
}
