//! `[[upstream]]`: repository prefixes served by another v2 registry, and
//! the pull-through cache of one.

use std::path::PathBuf;

use serde::Deserialize;

/// One upstream registry and the repositories Portcullis routes to it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct UpstreamConfig {
    /// Its name in logs (`backend="upstream:<name>"`) and messages.
    pub name: String,
    /// The repositories it serves: `prefix` and everything below it
    /// (`mirror` routes `mirror/alpine` and `mirror/library/alpine`).
    pub prefix: String,
    /// The registry's base URL, `https://host[:port]` (or `http://` on a
    /// private network).
    pub url: String,
    /// Whether the prefix is taken off the name the upstream sees
    /// (`mirror/alpine` is `alpine` there) or kept.
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// A single-segment name upstream (after stripping) gets this namespace
    /// first: Docker Hub keeps its official images under `library/`, so a
    /// cache of it sets `"library"` and `mirror/alpine` is
    /// `library/alpine` there. Unset: names go as they are.
    #[serde(default)]
    pub default_namespace: Option<String>,
    /// Whether clients may push (and delete) through this prefix, as the
    /// policy allows; off by default, and never with a cache.
    #[serde(default)]
    pub push: bool,
    /// Portcullis' own account at the upstream, used for its Basic
    /// challenge or to get a token from its token server; never the
    /// client's. Unset: anonymous.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding that account's password (its first line); never the
    /// password itself in the configuration.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) an `https://` upstream's certificate must
    /// chain to. Unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long the upstream may take to accept a connection and to
    /// answer a request's head, in seconds. A body then streams for as
    /// long as it takes, but may not stall longer than this between bytes.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Requests in flight to the upstream at once (the bound of its
    /// connection pool); more wait up to `timeout_secs` for a turn.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Whether the built-in catalog (`/v2/_catalog`) also lists this
    /// upstream's repositories (under the prefix, filtered by policy).
    #[serde(default)]
    pub catalog: bool,
    /// `[upstream.cache]`: keep what is pulled (a pull-through cache).
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

/// `[upstream.cache]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheConfig {
    /// How long a cached tag is served before the upstream is asked again
    /// whether it moved (a `HEAD`), in seconds. Content by digest never is.
    pub tag_max_age_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            tag_max_age_secs: 300,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    30
}

fn default_max_connections() -> usize {
    64
}

impl UpstreamConfig {
    /// What is wrong with this upstream on its own: `(key, message)`, the
    /// message naming the key.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control() || c == '"') {
            problems.push((
                "name",
                "name must be non-empty, without quotes or control characters".into(),
            ));
        }
        if crate::reference::RepoName::parse(&self.prefix).is_err() {
            problems.push((
                "prefix",
                format!(
                    "prefix `{}` is not a repository name (`mirror`, `vendor/images`)",
                    self.prefix
                ),
            ));
        }
        let url_ok = (self.url.starts_with("https://") || self.url.starts_with("http://"))
            && self.url.parse::<axum::http::Uri>().is_ok_and(|u| {
                u.host().is_some() && matches!(u.path(), "" | "/") && u.query().is_none()
            });
        if !url_ok {
            problems.push((
                "url",
                "url must be an https:// or http:// URL with a host and no path".into(),
            ));
        }
        if let Some(namespace) = &self.default_namespace {
            if namespace.contains('/') || crate::reference::RepoName::parse(namespace).is_err() {
                problems.push((
                    "default_namespace",
                    format!("default_namespace `{namespace}` is not one path segment"),
                ));
            }
        }
        if self.username.is_some() != self.password_file.is_some() {
            problems.push((
                "username",
                "username needs password_file, and password_file username".into(),
            ));
        }
        if self.timeout_secs == 0 {
            problems.push(("timeout_secs", "timeout_secs must be positive".into()));
        }
        if self.max_connections == 0 {
            problems.push(("max_connections", "max_connections must be positive".into()));
        }
        if self.push && self.cache.is_some() {
            problems.push((
                "push",
                "push: a pull-through cache is read-only, and push = true needs no [upstream.cache]".into(),
            ));
        }
        if self.cache.as_ref().is_some_and(|c| c.tag_max_age_secs == 0) {
            problems.push(("cache", "cache.tag_max_age_secs must be positive".into()));
        }
        problems
    }

    /// Whether `name` is one of this upstream's repositories.
    pub fn routes(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Whether two prefixes overlap: one routes repositories of the other.
pub fn overlap(a: &str, b: &str) -> bool {
    let under = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|r| r.starts_with('/'))
    };
    under(a, b) || under(b, a)
}
