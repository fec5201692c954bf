//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;

use crate::auth::Authority;
use crate::config::Config;
use crate::storage::{Storage, fs::FsDriver};

pub struct AppState {
    pub config: Config,
    pub storage: Storage,
    /// The token authority; `None` when authentication is disabled.
    pub auth: Option<Authority>,
}

impl AppState {
    /// Opens the storage the configuration names (creating the data directory
    /// on first start) and loads keys, users and policies.
    pub async fn new(config: Config) -> Result<Arc<Self>, String> {
        let root = &config.storage.root;
        let driver = FsDriver::new(root)
            .await
            .map_err(|e| format!("cannot open storage at {}: {e}", root.display()))?;
        let storage = Storage::new(Arc::new(driver));
        let auth = if config.auth.enabled {
            let config = config.clone();
            // Key generation and file reads: off the async threads.
            let authority = tokio::task::spawn_blocking(move || Authority::from_config(&config))
                .await
                .map_err(|e| e.to_string())??;
            Some(authority)
        } else {
            None
        };
        Ok(Arc::new(Self {
            config,
            storage,
            auth,
        }))
    }
}
