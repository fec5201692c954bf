//! Everything a request handler needs, built once from the configuration
//! (what can change while serving is behind a `Current`, or reloaded by
//! its owner: see `reconfigure.rs` and `auth/reload.rs`).

use std::sync::Arc;

use crate::auth::Authority;
use crate::auth::reload::Current;
use crate::config::Config;
use crate::storage::Storage;
use std::time::Duration;

pub struct AppState {
    pub config: Config,
    pub storage: Storage,
    /// The token authority; `None` when authentication is disabled.
    pub auth: Option<Authority>,
    /// The legacy v1 registry `/v1/` is routed to (`[v1] backend`).
    pub v1: Option<crate::api::v1::proxy::Backend>,
    /// `v1.v1_only_engines_below`, parsed once: engines older than this are
    /// kept off `/v2/`.
    pub v1_only_below: Option<crate::api::v1::engine::Version>,
    /// `[[upstream]]`: the prefixes other registries serve; replaced whole
    /// when `SIGHUP` brings new settings (`reconfigure.rs`).
    pub upstreams: Current<crate::api::upstream::Upstreams>,
    /// The configuration in force: `config` with the sections a `SIGHUP`
    /// applied since (`reconfigure.rs` compares a new file against it).
    pub applied: std::sync::Mutex<Config>,
    /// `[login]`: the sign-in page.
    pub sign_in: Option<crate::api::login::SignInPage>,
    pub metrics: crate::metrics::Metrics,
    /// `[audit]`: the audit trail.
    pub audit: crate::audit::Audit,
    /// `[notifications]`: the webhooks' queues and delivery.
    pub notifier: crate::notify::Notifier,
    /// `metrics.token_file`'s token, read at start.
    pub metrics_token: Option<String>,
}

impl AppState {
    /// Opens the storage the configuration names (creating the data directory
    /// on first start) and loads keys, users and policies.
    pub async fn new(config: Config) -> Result<Arc<Self>, String> {
        let metrics = crate::metrics::Metrics::new(config.metrics.enabled);
        let mut storage = crate::storage::open::storage(&config.storage).await?;
        if let Some(observer) = metrics.storage_observer(match config.storage.s3 {
            Some(_) => "s3",
            None => "filesystem",
        }) {
            storage = storage.metered(observer);
        }
        // Before serving: what crashes left in `uploads/` goes, and the
        // sessions kept are counted per account before anyone opens more.
        storage.sweep_uploads_logged().await;
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
        let v1 = match &config.v1.backend {
            Some(url) => Some(crate::api::v1::proxy::Backend::new(
                url,
                std::time::Duration::from_secs(config.v1.backend_timeout_secs),
            )?),
            None => None,
        };
        let v1_only_below = config
            .v1
            .v1_only_engines_below
            .as_deref()
            .and_then(crate::api::v1::engine::Version::parse);
        let upstreams = Current::new(Arc::new(crate::api::upstream::Upstreams::new(
            &config.upstream,
        )?));
        let sign_in = match &config.login {
            Some(_) if auth.is_none() => {
                return Err(
                    "[login] needs authentication (auth.enabled): the page makes tokens".into(),
                );
            }
            Some(login) => Some(crate::api::login::SignInPage::new(login)?),
            None => None,
        };
        let metrics_token = match &config.metrics.token_file {
            Some(file) => Some(crate::config::read_secret("metrics.token_file", file)?),
            None => None,
        };
        let audit = match &config.audit.file {
            Some(file) => crate::audit::Audit::open(file).await?,
            None => crate::audit::Audit::disabled(),
        };
        let notifier = match config.notifications.endpoints.is_empty() {
            true => crate::notify::Notifier::disabled(),
            false => crate::notify::Notifier::start(&config, &metrics).await?,
        };
        let interval = Duration::from_secs(config.storage.sweep_interval_secs);
        let state = Arc::new(Self {
            applied: std::sync::Mutex::new(config.clone()),
            config,
            storage,
            auth,
            v1,
            v1_only_below,
            upstreams,
            sign_in,
            metrics,
            audit,
            notifier,
            metrics_token,
        });
        tokio::spawn(sweep_periodically(Arc::downgrade(&state), interval));
        if state.auth.is_some() {
            tokio::spawn(watch_files(Arc::downgrade(&state)));
        }
        Ok(state)
    }
}

/// The storage sweep, every `interval` while the state lives (the
/// temporaries' walk of the whole tree runs at once too, off the start).
async fn sweep_periodically(state: std::sync::Weak<AppState>, interval: Duration) {
    let mut first = true;
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        if first {
            state.storage.sweep_temporaries_logged().await;
            first = false;
        } else {
            state.storage.sweep().await;
        }
        drop(state);
        tokio::time::sleep(interval).await;
    }
}

/// Checks the users, policy and key files every second while the state lives, so
/// that an edit, good or bad, is logged when it is made and not only at the
/// next request that needs them.
async fn watch_files(state: std::sync::Weak<AppState>) {
    let mut ticks = tokio::time::interval(crate::auth::reload::CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        // Reading a few small files: off the async threads, as at start.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(authority) = &state.auth {
                authority.check_files();
            }
        })
        .await;
    }
}
