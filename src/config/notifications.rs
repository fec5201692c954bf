//! `[notifications]`: webhooks told of pushes, pulls, mounts and deletes
//! (`notify/`), each endpoint with its own durable queue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[notifications]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Where each endpoint's queue of undelivered events is kept (a
    /// directory per endpoint name). Unset: `_notifications/` under
    /// `storage.root`, beside the registry's own tree (a repository name
    /// never starts with `_`), so that `--data-dir` moves it too.
    pub queue_dir: Option<PathBuf>,
    /// `[[notifications.endpoints]]`: none, no events are made.
    pub endpoints: Vec<NotifyEndpointConfig>,
}

impl NotificationsConfig {
    /// The queue directory, `storage_root`'s `_notifications/` when unset.
    pub fn queue_dir(&self, storage_root: &Path) -> PathBuf {
        self.queue_dir
            .clone()
            .unwrap_or_else(|| storage_root.join("_notifications"))
    }
}

/// The actions an endpoint may be told of, as distribution names them.
pub const ACTIONS: &[&str] = &["push", "pull", "mount", "delete"];

/// One receiver of events.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyEndpointConfig {
    /// Its name in metrics and logs, and the name of its queue's directory:
    /// letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Where events are POSTed: an `http://` or `https://` URL, without
    /// credentials in it.
    pub url: String,
    /// Headers sent with every POST, as they are (not secrets: use
    /// `token_file` for a credential).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A file holding a bearer token for the receiver (its first line),
    /// sent as `Authorization: Bearer …`; never in an event or a log.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Repository globs (the policies' syntax: `*` within a segment, `**`
    /// across them) an event's repository must match one of.
    #[serde(default = "all_repositories")]
    pub repositories: Vec<String>,
    /// Which actions: `push`, `pull`, `mount`, `delete`.
    #[serde(default = "all_actions")]
    pub actions: Vec<String>,
    /// How long one POST may take, connecting included, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The first wait after a failed POST, in milliseconds; each further
    /// failure doubles it, up to `backoff_max_secs`.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// The longest wait between two attempts, in seconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
    /// Events kept for it, undelivered, at most; past it new events are
    /// dropped (and counted), the queued ones kept.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
}

fn all_repositories() -> Vec<String> {
    vec!["**".to_owned()]
}

fn all_actions() -> Vec<String> {
    ACTIONS.iter().map(|a| (*a).to_owned()).collect()
}

fn default_timeout() -> u64 {
    5
}

fn default_backoff_initial() -> u64 {
    500
}

fn default_backoff_max() -> u64 {
    300
}

fn default_max_pending() -> u64 {
    10_000
}

impl NotifyEndpointConfig {
    /// What is wrong with this endpoint on its own: `(key, message)`, the
    /// message naming the key.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            problems.push((
                "name",
                "name must be letters, digits, `.`, `_` or `-`, not starting with `.` (it names the queue's directory)".into(),
            ));
        }
        let url_ok = (self.url.starts_with("https://") || self.url.starts_with("http://"))
            && self
                .url
                .parse::<axum::http::Uri>()
                .is_ok_and(|u| u.host().is_some());
        if !url_ok {
            problems.push((
                "url",
                "url must be an http:// or https:// URL with a host".into(),
            ));
        } else if self.url.split("://").nth(1).is_some_and(|rest| {
            rest.split(['/', '?', '#'])
                .next()
                .is_some_and(|a| a.contains('@'))
        }) {
            // Not in the URL, which is shown and logged: in a file.
            problems.push((
                "url",
                "url must not hold credentials (use token_file)".into(),
            ));
        }
        for (name, value) in &self.headers {
            let parsed = axum::http::HeaderName::from_bytes(name.as_bytes()).ok();
            match parsed {
                None => {
                    problems.push(("headers", format!("headers: `{name}` is not a header name")))
                }
                Some(header) if header == axum::http::header::CONTENT_TYPE => problems.push((
                    "headers",
                    "headers: content-type is the events' own media type".into(),
                )),
                Some(header)
                    if header == axum::http::header::AUTHORIZATION && self.token_file.is_some() =>
                {
                    problems.push((
                        "headers",
                        "headers: authorization and token_file both set the credential".into(),
                    ))
                }
                Some(_) => {}
            }
            if axum::http::HeaderValue::from_str(value).is_err() {
                problems.push((
                    "headers",
                    format!("headers: the value of `{name}` is not a header value"),
                ));
            }
        }
        if self.repositories.is_empty() {
            problems.push((
                "repositories",
                "repositories must name at least one glob (`**` for all)".into(),
            ));
        }
        for glob in &self.repositories {
            if let Err(e) = crate::policy::RepoPattern::parse(glob) {
                problems.push(("repositories", format!("repositories: {e}")));
            }
        }
        if self.actions.is_empty() {
            problems.push((
                "actions",
                format!("actions must name at least one of {}", ACTIONS.join(", ")),
            ));
        }
        for action in &self.actions {
            if !ACTIONS.contains(&action.as_str()) {
                problems.push((
                    "actions",
                    format!("actions: `{action}` is not one of {}", ACTIONS.join(", ")),
                ));
            }
        }
        for (key, value) in [
            ("timeout_secs", self.timeout_secs),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_secs", self.backoff_max_secs),
            ("max_pending", self.max_pending),
        ] {
            if value == 0 {
                problems.push((key, format!("{key} must be positive")));
            }
        }
        if self.backoff_initial_ms > self.backoff_max_secs.saturating_mul(1000) {
            problems.push((
                "backoff_initial_ms",
                "backoff_initial_ms must not be longer than backoff_max_secs".into(),
            ));
        }
        problems
    }
}
