//! The storage a configuration names: the filesystem under
//! `storage.root`, or an S3 bucket when `[storage.s3]` is set.

use std::sync::Arc;
use std::time::Duration;

use super::s3::{ConditionalWrites, S3Driver, S3Options};
use super::{Driver, Storage, UploadLimits, fs::FsDriver};
use crate::config::{S3Config, StorageConfig};

/// Opens it (creating the data directory on first start; on S3, asking the
/// bucket for one listing, so a wrong endpoint or key fails here).
pub async fn storage(config: &StorageConfig) -> Result<Storage, String> {
    let driver: Arc<dyn Driver> = match &config.s3 {
        None => {
            let root = &config.root;
            Arc::new(
                FsDriver::new(root)
                    .await
                    .map_err(|e| format!("cannot open storage at {}: {e}", root.display()))?,
            )
        }
        Some(s3) => {
            let driver = S3Driver::new(&s3_options(s3)?).map_err(|e| format!("storage.s3: {e}"))?;
            driver
                .check()
                .await
                .map_err(|e| format!("storage.s3: bucket `{}`: {e}", s3.bucket))?;
            Arc::new(driver)
        }
    };
    Ok(Storage::new(driver)
        .with_upload_limits(UploadLimits {
            max_idle: Duration::from_secs(config.upload_max_idle_secs),
            per_account: config.max_uploads_per_account,
            memory: config.upload_memory_mib << 20,
            memory_wait: Duration::from_millis(config.upload_memory_wait_ms),
        })
        .with_cache(
            Duration::from_secs(config.staleness_secs),
            config.metadata_cache_mib << 20,
        ))
}

/// The driver's options, with the secret key read from its file (what
/// `check-config` reads too; the store is not contacted).
pub fn s3_options(config: &S3Config) -> Result<S3Options, String> {
    let secret_access_key = match &config.secret_access_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("storage.s3: secret_access_key_file {}: {e}", path.display())
            })?;
            let secret = text.lines().next().unwrap_or("").trim().to_owned();
            if secret.is_empty() {
                return Err(format!(
                    "storage.s3: secret_access_key_file {} is empty",
                    path.display()
                ));
            }
            Some(secret)
        }
        None => None,
    };
    Ok(S3Options {
        endpoint: config.endpoint.clone(),
        region: config.region.clone(),
        bucket: config.bucket.clone(),
        prefix: config.prefix.clone(),
        access_key_id: config.access_key_id.clone(),
        secret_access_key,
        path_style: config.path_style.unwrap_or(config.endpoint.is_some()),
        io_timeout: Duration::from_secs(config.io_timeout_secs),
        parts: config.parts(),
        conditional_writes: match config.conditional_writes {
            None => ConditionalWrites::Probe,
            Some(true) => ConditionalWrites::On,
            Some(false) => ConditionalWrites::Off,
        },
        redirect_pulls: config
            .redirect_pulls
            .then(|| Duration::from_secs(config.redirect_expiry_secs)),
        reads_ahead: config.reads_ahead,
        read_memory: config.read_memory_mib << 20,
        relay_pulls: config.relay_pulls,
    })
}
