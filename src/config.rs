//! Configuration: TOML, every key known (unknown keys are an error), defaults
//! that make `portcullis serve` work with no file at all.
//!
//! Loading reports *every* problem it can find, each with `file:line:col`:
//! syntax errors (the parser recovers), unknown keys anywhere, a type error
//! per section (sections are read independently so one mistake does not hide
//! the others), and semantic checks on the values.

mod identity;
mod login;
mod notifications;
mod s3;
mod upstream;

pub use identity::{
    FILE_SOURCE, GroupsFrom, IdentityConfig, LdapConfig, LdapGroups, Nested, OidcConfig,
};
pub use login::LoginConfig;
pub use notifications::{ACTIONS as NOTIFY_ACTIONS, NotificationsConfig, NotifyEndpointConfig};
pub use s3::S3Config;
pub use upstream::{CacheConfig, UpstreamConfig};

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub token: TokenConfig,
    pub users: UsersConfig,
    pub policy: PolicyConfig,
    pub identity: IdentityConfig,
    pub v1: V1Config,
    /// `[[upstream]]`, first match wins (overlaps are refused).
    pub upstream: Vec<UpstreamConfig>,
    /// `[login]`: the sign-in page; unset, there is none.
    pub login: Option<LoginConfig>,
    pub metrics: MetricsConfig,
    pub audit: AuditConfig,
    /// `[notifications]`: webhooks of pushes, pulls and deletes.
    pub notifications: NotificationsConfig,
}

/// `[audit]`: the audit trail (see `audit.rs`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where its JSON lines go: a file (appended to, created `0600`), or
    /// `-` for stdout; unset: no audit trail.
    pub file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus exposition at `/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether metrics are counted and `/metrics` served.
    pub enabled: bool,
    /// A file holding a token scrapers must send (`Authorization: Bearer
    /// …`); unset: anyone who reaches the address may read the metrics.
    pub token_file: Option<PathBuf>,
    /// A listener of its own for `/metrics` (plain HTTP, say
    /// `127.0.0.1:9100` or an address only the monitoring network
    /// reaches); the main listener then answers `/metrics` with 404.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token_file: None,
            listen: None,
        }
    }
}

/// `[v1]`: the legacy v1 protocol, routed to a legacy registry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct V1Config {
    /// The legacy registry (docker-registry 0.9) that `/v1/` requests are
    /// forwarded to, as `http://host:port`. Unset: `/v1/` is not served.
    pub backend: Option<String>,
    /// Docker engines older than this version (`1.10`: engines 1.6–1.9,
    /// which speak both) are told there is no v2 (`/v2/` answers 404), so
    /// they push and pull over v1 only and never split a repository
    /// between the two. Unset: every engine that speaks v2 uses it.
    pub v1_only_engines_below: Option<String>,
    /// Seconds the backend may take to answer a request's head (past it the
    /// client gets `503`), and the longest it may go silent in a body while
    /// Portcullis waits on it (past it the client's read fails); a body
    /// otherwise streams for as long as it needs.
    pub backend_timeout_secs: u64,
}

impl Default for V1Config {
    fn default() -> Self {
        Self {
            backend: None,
            v1_only_engines_below: None,
            backend_timeout_secs: crate::api::v1::proxy::DEFAULT_HEAD_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL clients reach Portcullis at (scheme, host, port), used for the
    /// token realm in challenges. Unset: taken from each request's `Host`.
    pub public_url: Option<String>,
    /// Seconds a request's head (request line and headers) may take to
    /// arrive, from its first byte, or on a new connection from the accept.
    pub header_timeout_secs: u64,
    /// Seconds a keep-alive connection may sit idle between requests.
    pub idle_timeout_secs: u64,
    /// Seconds a request body may go without sending a byte while the
    /// server waits for it (inactivity, not the upload's total time).
    pub body_timeout_secs: u64,
    /// Connections served at once; at the limit the longest-idle connection
    /// is closed for a new one, and if none is idle new ones wait in the
    /// listen backlog. Unset: half the open-file limit.
    pub max_connections: Option<usize>,
    /// `[server.tls]`: serve HTTPS on `listen`. Unset: plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// The scheme clients reach `listen` with: `https` when TLS is on.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// `[server.tls]`: the certificate and key Portcullis serves HTTPS with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// An address on which a plain-HTTP listener answers every request with
    /// a permanent redirect to the same path over HTTPS. Unset: none.
    #[serde(default)]
    pub redirect_http: Option<SocketAddr>,
    /// CA certificates (PEM) that client certificates must chain to. Set:
    /// clients are asked for a certificate, and a token request that
    /// carries no other credential is made as the account the
    /// certificate's subject common name (CN) names. Unset: none asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a connection without a client certificate
    /// is served (`optional`, the default) or refused in the handshake
    /// (`required`).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl TlsConfig {
    /// A pair with nothing else set.
    pub fn pair(cert: PathBuf, key: PathBuf) -> Self {
        Self {
            cert,
            key,
            redirect_http: None,
            client_ca: None,
            client_auth: ClientAuth::default(),
        }
    }
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    /// Require tokens on `/v2/` (the default). `false` runs an open registry:
    /// anyone may do anything, so only for a private loopback or a test.
    pub enabled: bool,
    /// Failed logins allowed per account and client address within
    /// `failure_window_secs` before further attempts get 429.
    pub max_failures_per_account: u32,
    /// Failed logins allowed per client address (any account) in the window.
    pub max_failures_per_address: u32,
    pub failure_window_secs: u64,
    /// Password verifications run at once, at most (each argon2id one holds
    /// 19 MiB); 0: one per core, within a sixteenth of the memory.
    pub max_concurrent_verifications: u32,
    /// Logins that may wait for a verification slot beyond those; more get 429.
    pub verification_queue: u32,
    /// How long a login waits for a slot (and for attempts in flight on the
    /// same account and address) before it gets 429, in milliseconds.
    pub verification_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TokenConfig {
    /// `iss` of issued tokens; registries trusting Portcullis set the same `issuer`.
    pub issuer: String,
    /// The service name (`aud` of tokens, `service` in challenges).
    pub service: String,
    /// Lifetime of access tokens, in seconds (at least 60).
    pub lifetime_secs: u64,
    /// Lifetime of refresh (identity) tokens, in days.
    pub refresh_lifetime_days: u64,
    /// Directory of signing keys and certificates (`token-*.key/.crt`, `bundle.crt`).
    pub key_dir: PathBuf,
    /// Type of a key generated on first start or by `keygen`: `es256` or `rs256`.
    pub key_type: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsersConfig {
    /// The users file: TOML (`[users.<name>]`), or an htpasswd file of bcrypt
    /// hashes when the name does not end in `.toml`. A missing file means no users.
    pub file: PathBuf,
    /// How long a successful password check is remembered, in seconds (0: never).
    pub cache_secs: u64,
    /// Shortest password `portcullis user add` and `passwd` accept, in characters.
    pub min_password_length: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyConfig {
    /// Directory of policy files, read in file-name order. When it does not
    /// exist, the default policy built into the binary is used.
    pub dir: PathBuf,
    /// Policy test files (`[[case]]` tables) that `check-config` runs
    /// against the policy; see `portcullis policy test`.
    pub tests: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    /// Root directory of the filesystem storage.
    pub root: PathBuf,
    /// Upload sessions that received nothing for this long are removed, in seconds.
    pub upload_max_idle_secs: u64,
    /// Upload sessions one account may hold open at once.
    pub max_uploads_per_account: usize,
    /// How often idle sessions and crash leftovers are swept, in seconds
    /// (also once at start).
    pub sweep_interval_secs: u64,
    /// Memory all uploads receiving a body may hold at once, in MiB; each
    /// holds up to [`StorageConfig::upload_share_mib`] (24 on the
    /// filesystem), so this bounds how many stream at once (at least one
    /// upload's share).
    pub upload_memory_mib: usize,
    /// How long an upload waits for its share of that memory before it
    /// gets 429, in milliseconds.
    pub upload_memory_wait_ms: u64,
    /// How long a change made by another replica (a moved or deleted tag,
    /// a deleted manifest or blob link, a new repository) may go unseen in
    /// this one, in seconds: what it lists, and the tags, links and
    /// manifests it cached. This replica's own changes show at once; 0
    /// reads storage for every request.
    pub staleness_secs: u64,
    /// What that cache (tags, links, manifests, blob sizes) holds at most,
    /// in MiB, counting keys and bookkeeping; past it, it starts over. 0
    /// caches nothing.
    pub metadata_cache_mib: usize,
    /// `[storage.s3]`: keep everything in an S3-compatible bucket instead
    /// of under `root`.
    pub s3: Option<S3Config>,
}

impl StorageConfig {
    /// What one upload receiving a body holds in memory, in MiB: its
    /// driver's write buffers (the filesystem's batches, or S3's parts) and
    /// the bytes waiting to be hashed, as the storage counts its budget.
    pub fn upload_share_mib(&self) -> usize {
        let buffers = self
            .s3
            .as_ref()
            .map_or(crate::storage::fs::ASSEMBLY_MEMORY, |s3| {
                s3.parts().memory()
            });
        (buffers + crate::storage::HASH_BACKLOG) >> 20
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info` or `portcullis=debug`.
    pub level: String,
    /// How each line is written: `text` for people, `json` (one object a
    /// line) for a log collector. `PORTCULLIS_LOG_FORMAT` wins.
    pub format: LogFormat,
    /// Peers (addresses or CIDR networks: the proxies in front) whose
    /// `X-Request-Id` is taken as the request's id, when it is short and of a
    /// safe charset; every other request gets an id of our own. Empty: none.
    #[serde(deserialize_with = "networks")]
    pub request_id_from: Vec<ipnet::IpNet>,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A list of addresses or networks (`10.0.0.5`, `10.0.0.0/8`, `::1`), as a
/// policy's `from` reads them.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            crate::policy::parse_net(s).ok_or_else(|| {
                serde::de::Error::custom(format!("`{s}` is not an address or a CIDR network"))
            })
        })
        .collect()
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            public_url: None,
            header_timeout_secs: 10,
            idle_timeout_secs: 75,
            body_timeout_secs: 60,
            max_connections: None,
            tls: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            failure_window_secs: 300,
            max_concurrent_verifications: 0,
            verification_queue: 8,
            verification_wait_ms: 1000,
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "portcullis".to_owned(),
            service: "portcullis".to_owned(),
            lifetime_secs: 300,
            refresh_lifetime_days: 90,
            key_dir: PathBuf::from("./certs"),
            key_type: "es256".to_owned(),
        }
    }
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("./users.toml"),
            cache_secs: 60,
            min_password_length: 8,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./policies"),
            tests: Vec::new(),
        }
    }
}

/// The largest metadata cache accepted, in MiB (64 GiB).
const MAX_METADATA_CACHE_MIB: usize = 64 << 10;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("./data"),
            upload_max_idle_secs: 24 * 60 * 60,
            max_uploads_per_account: 100,
            sweep_interval_secs: 60 * 60,
            upload_memory_mib: 1024,
            upload_memory_wait_ms: 10_000,
            staleness_secs: 5,
            metadata_cache_mib: 64,
            s3: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            request_id_from: Vec::new(),
        }
    }
}

/// One thing wrong with a configuration file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column; `None` when the problem has no single place.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl Problem {
    /// `file:line:col: message`, or `file: message` without a place.
    pub fn in_file(&self, file: &Path) -> String {
        match self.location {
            Some((line, col)) => format!("{}:{line}:{col}: {}", file.display(), self.message),
            None => format!("{}: {}", file.display(), self.message),
        }
    }
}

/// Everything wrong with one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        write!(f, "{}: {count} problem{plural}", self.path.display())?;
        for problem in &self.problems {
            write!(f, "\n{}", problem.in_file(&self.path))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                location: None,
                message,
            }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates configuration text, returning every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        match Self::parse_lenient(text) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(problems),
        }
    }

    /// Every problem of the text, and the configuration as far as it could
    /// be read (each key that parsed, defaults for the others); `None` on a
    /// syntax error. `check-config` goes on to check the files it names.
    pub fn parse_lenient(text: &str) -> (Option<Self>, Vec<Problem>) {
        let mut reader = Reader::new(text);
        let (root, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            reader.error(e);
        }
        if !reader.problems.is_empty() {
            return (None, reader.problems);
        }
        let root = root.into_inner();
        let mut config = Config::default();
        for (key, value) in root.iter() {
            let span = key.span();
            match key.get_ref().as_ref() {
                "server" => config.server = reader.section("server", value),
                "storage" => config.storage = reader.section("storage", value),
                "log" => config.log = reader.section("log", value),
                "auth" => config.auth = reader.section("auth", value),
                "token" => config.token = reader.section("token", value),
                "users" => config.users = reader.section("users", value),
                "policy" => config.policy = reader.section("policy", value),
                "identity" => config.identity = reader.section("identity", value),
                "v1" => config.v1 = reader.section("v1", value),
                "upstream" => config.upstream = reader.section("upstream", value),
                "login" => config.login = reader.section("login", value),
                "metrics" => config.metrics = reader.section("metrics", value),
                "audit" => config.audit = reader.section("audit", value),
                "notifications" => config.notifications = reader.section("notifications", value),
                other => reader.at(span, format!("unknown section or key `{other}`")),
            }
        }
        config.check(&root, &mut reader);
        reader.problems.sort_by_key(|p| p.location);
        (Some(config), reader.problems)
    }

    /// Checks on values that parsed but make no sense.
    fn check(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        self.check_identity(root, reader);
        self.check_upstreams(root, reader);
        self.check_login(root, reader);
        self.check_notifications(root, reader);
        if self.storage.root.as_os_str().is_empty() {
            let span = lookup(root, &["storage", "root"]);
            reader.at_opt(span, "storage.root must not be empty".to_owned());
        }
        for (key, value) in [
            ("upload_max_idle_secs", self.storage.upload_max_idle_secs),
            (
                "max_uploads_per_account",
                self.storage.max_uploads_per_account as u64,
            ),
            ("sweep_interval_secs", self.storage.sweep_interval_secs),
        ] {
            if value == 0 {
                let span = lookup(root, &["storage", key]);
                reader.at_opt(span, format!("storage.{key} must be positive"));
            }
        }
        let share = self.storage.upload_share_mib();
        if self.storage.upload_memory_mib < share {
            let span = lookup(root, &["storage", "upload_memory_mib"]);
            reader.at_opt(
                span,
                format!(
                    "storage.upload_memory_mib must be at least {share} (what one upload holds)"
                ),
            );
        }
        // A bound in memory, not a wish: more than the machine could hold
        // is a typo (and would overflow in bytes).
        if self.storage.metadata_cache_mib > MAX_METADATA_CACHE_MIB {
            let span = lookup(root, &["storage", "metadata_cache_mib"]);
            reader.at_opt(
                span,
                format!("storage.metadata_cache_mib must be at most {MAX_METADATA_CACHE_MIB}"),
            );
        }
        if let Some(s3) = &self.storage.s3 {
            for (key, message) in s3.problems() {
                let span = lookup(root, &["storage", "s3", key])
                    .or_else(|| lookup(root, &["storage", "s3"]));
                reader.at_opt(span, message);
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            let span = lookup(root, &["log", "level"]);
            reader.at_opt(span, format!("log.level is not a valid filter: {e}"));
        }
        if let Some(url) = &self.v1.backend {
            // Plain HTTP to a backend on a private network, as the legacy
            // registry is run behind a gateway; only its base is kept.
            let ok = url.starts_with("http://")
                && url
                    .parse::<axum::http::Uri>()
                    .is_ok_and(|u| u.host().is_some() && matches!(u.path(), "" | "/"));
            if !ok {
                let span = lookup(root, &["v1", "backend"]);
                reader.at_opt(
                    span,
                    "v1.backend must be an http:// URL with a host and no path".to_owned(),
                );
            }
        }
        if self.v1.backend_timeout_secs == 0 {
            let span = lookup(root, &["v1", "backend_timeout_secs"]);
            reader.at_opt(span, "v1.backend_timeout_secs must be positive".to_owned());
        }
        if let Some(version) = &self.v1.v1_only_engines_below {
            if crate::api::v1::engine::Version::parse(version).is_none() {
                let span = lookup(root, &["v1", "v1_only_engines_below"]);
                reader.at_opt(
                    span,
                    format!(
                        "v1.v1_only_engines_below must be a version such as `1.10`, not `{version}`"
                    ),
                );
            }
            if self.v1.backend.is_none() {
                let span = lookup(root, &["v1", "v1_only_engines_below"]);
                reader.at_opt(span, "v1.v1_only_engines_below needs v1.backend".to_owned());
            }
        }
        if let Some(url) = &self.server.public_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url
                    .parse::<axum::http::Uri>()
                    .is_ok_and(|u| u.host().is_some());
            if !ok {
                let span = lookup(root, &["server", "public_url"]);
                reader.at_opt(
                    span,
                    "server.public_url must be an http:// or https:// URL with a host".to_owned(),
                );
            }
        }
        for (key, value) in [
            ("header_timeout_secs", self.server.header_timeout_secs),
            ("idle_timeout_secs", self.server.idle_timeout_secs),
            ("body_timeout_secs", self.server.body_timeout_secs),
        ] {
            if value == 0 {
                let span = lookup(root, &["server", key]);
                reader.at_opt(span, format!("server.{key} must be positive"));
            }
        }
        if let Some(tls) = &self.server.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    let span = lookup(root, &["server", "tls", key]);
                    reader.at_opt(span, format!("server.tls.{key} must not be empty"));
                }
            }
            if tls.client_auth == ClientAuth::Required && tls.client_ca.is_none() {
                let span = lookup(root, &["server", "tls", "client_auth"]);
                reader.at_opt(
                    span,
                    "server.tls.client_auth = \"required\" needs server.tls.client_ca, the CA that signs the client certificates".to_owned(),
                );
            }
            if tls
                .client_ca
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
            {
                let span = lookup(root, &["server", "tls", "client_ca"]);
                reader.at_opt(span, "server.tls.client_ca must not be empty".to_owned());
            }
            if tls.redirect_http == Some(self.server.listen) {
                let span = lookup(root, &["server", "tls", "redirect_http"]);
                reader.at_opt(
                    span,
                    "server.tls.redirect_http must differ from server.listen".to_owned(),
                );
            }
        }
        if self.server.max_connections == Some(0) {
            let span = lookup(root, &["server", "max_connections"]);
            reader.at_opt(span, "server.max_connections must be positive".to_owned());
        }
        if self.token.lifetime_secs < 60 {
            let span = lookup(root, &["token", "lifetime_secs"]);
            reader.at_opt(
                span,
                "token.lifetime_secs must be at least 60 (older clients refuse shorter tokens)"
                    .to_owned(),
            );
        }
        if crate::auth::keys::KeyKind::parse(&self.token.key_type).is_none() {
            let span = lookup(root, &["token", "key_type"]);
            reader.at_opt(span, "token.key_type must be `es256` or `rs256`".to_owned());
        }
        for (key, value) in [
            ("issuer", &self.token.issuer),
            ("service", &self.token.service),
        ] {
            if value.is_empty()
                || value.contains(['"', '\\'])
                || value.chars().any(char::is_control)
            {
                let span = lookup(root, &["token", key]);
                reader.at_opt(
                    span,
                    format!("token.{key} must be non-empty, without quotes, backslashes or control characters"),
                );
            }
        }
        if self.users.min_password_length == 0 {
            let span = lookup(root, &["users", "min_password_length"]);
            reader.at_opt(
                span,
                "users.min_password_length must be at least 1".to_owned(),
            );
        }
        if self.auth.failure_window_secs == 0 {
            let span = lookup(root, &["auth", "failure_window_secs"]);
            reader.at_opt(span, "auth.failure_window_secs must be positive".to_owned());
        }
        if self.auth.verification_wait_ms > 60_000 {
            let span = lookup(root, &["auth", "verification_wait_ms"]);
            reader.at_opt(
                span,
                "auth.verification_wait_ms must be at most 60000 (a short wait, then 429)"
                    .to_owned(),
            );
        }
    }
}

/// The problems found in one text so far, each placed at its line and
/// column (the policy files are read with it too).
pub(crate) struct Reader<'t> {
    text: &'t str,
    pub(crate) problems: Vec<Problem>,
}

impl<'t> Reader<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    /// Reads one section on its own, recording its unknown keys and type
    /// errors. When the section fails as a whole, its keys are read one by
    /// one, so that one key of the wrong type neither hides the section's
    /// other problems nor the values of its good keys (which the checks
    /// after reading still look at); the bad keys keep their defaults.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> T {
        let DeValue::Table(table) = value.get_ref() else {
            return self.read_section(name, value).unwrap_or_default();
        };
        let problems = self.problems.len();
        if let Some(section) = self.read_section(name, value) {
            return section;
        }
        self.problems.truncate(problems);
        let mut good = DeTable::new();
        for (key, item) in table.iter() {
            let mut alone = DeTable::new();
            alone.insert(key.clone(), item.clone());
            let alone = Spanned::new(value.span(), DeValue::Table(alone));
            let before = self.problems.len();
            // An unknown key reads "fine" (it is only reported): keep it
            // out of the final read, where it would be reported again.
            if self.read_section::<T>(name, &alone).is_some() && self.problems.len() == before {
                good.insert(key.clone(), item.clone());
            }
        }
        let good = Spanned::new(value.span(), DeValue::Table(good));
        self.read_section(name, &good).unwrap_or_default()
    }

    /// One attempt at reading a section, recording what is wrong with it.
    fn read_section<T: DeserializeOwned>(
        &mut self,
        name: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut unknown = Vec::new();
        let deserializer = ValueDeserializer::from(value.clone());
        let parsed =
            serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()));
        for path in unknown {
            // serde_ignored writes `?` for the `Some` of an optional
            // section (`server.tls.?.kye`); the file has no such key.
            let keys: Vec<&str> = path.split('.').filter(|k| *k != "?").collect();
            let path = keys.join(".");
            let span = match value.get_ref() {
                DeValue::Table(table) => lookup_key(table, &keys),
                _ => None,
            };
            self.at_opt(span, format!("unknown key `{name}.{path}`"));
        }
        match parsed {
            Ok(section) => Some(section),
            Err(e) => {
                let message = format!("in [{name}]: {}", e.message().trim_end());
                self.at_opt(e.span(), message);
                None
            }
        }
    }

    fn error(&mut self, e: toml::de::Error) {
        let message = e.message().trim_end().to_owned();
        self.at_opt(e.span(), message);
    }

    pub(crate) fn at(&mut self, span: Range<usize>, message: String) {
        self.at_opt(Some(span), message)
    }

    pub(crate) fn at_opt(&mut self, span: Option<Range<usize>>, message: String) {
        let location = span.map(|span| line_col(self.text, span.start));
        self.problems.push(Problem { location, message });
    }
}

impl Config {
    /// `[identity]`: each directory's values, unique names, and an order
    /// that names only sources that exist.
    fn check_identity(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        let identity = &self.identity;
        let mut names: Vec<&str> = vec![FILE_SOURCE];
        for (i, ldap) in identity.ldap.iter().enumerate() {
            let index = i.to_string();
            for (key, message) in ldap.problems() {
                let span = lookup(root, &["identity", "ldap", &index, key])
                    .or_else(|| lookup(root, &["identity", "ldap", &index]));
                reader.at_opt(span, format!("identity.ldap `{}`: {message}", ldap.name));
            }
            if names.contains(&ldap.name.as_str()) && ldap.name != FILE_SOURCE {
                let span = lookup(root, &["identity", "ldap", &index, "name"]);
                reader.at_opt(
                    span,
                    format!("identity.ldap name `{}` is used twice", ldap.name),
                );
            }
            names.push(&ldap.name);
        }
        for (i, oidc) in identity.oidc.iter().enumerate() {
            let index = i.to_string();
            for (key, message) in oidc.problems() {
                let span = lookup(root, &["identity", "oidc", &index, key])
                    .or_else(|| lookup(root, &["identity", "oidc", &index]));
                reader.at_opt(span, format!("identity.oidc `{}`: {message}", oidc.name));
            }
            let span = || lookup(root, &["identity", "oidc", &index, "name"]);
            if names.contains(&oidc.name.as_str()) && oidc.name != FILE_SOURCE {
                reader.at_opt(
                    span(),
                    format!("identity source name `{}` is used twice", oidc.name),
                );
            }
            let first_of_name = !identity.oidc[..i].iter().any(|o| o.name == oidc.name);
            if first_of_name && identity.order.iter().flatten().any(|n| *n == oidc.name) {
                reader.at_opt(
                    lookup(root, &["identity", "order"]),
                    format!(
                        "identity.order names the OIDC issuer `{}`: issuers are not ordered (a token goes to the issuer it names)",
                        oidc.name
                    ),
                );
            }
            if identity.oidc[..i].iter().any(|o| o.issuer == oidc.issuer) {
                reader.at_opt(
                    lookup(root, &["identity", "oidc", &index, "issuer"]),
                    format!(
                        "identity.oidc `{}`: issuer `{}` is configured twice",
                        oidc.name, oidc.issuer
                    ),
                );
            }
            names.push(&oidc.name);
        }
        let password_sources = &names[..names.len() - identity.oidc.len()];
        if let Some(order) = &identity.order {
            let span = || lookup(root, &["identity", "order"]);
            for name in order {
                if !names.contains(&name.as_str()) {
                    // (An OIDC issuer's name is reported above.)
                    reader.at_opt(
                        span(),
                        format!(
                            "identity.order names `{name}`, which is neither `{FILE_SOURCE}` nor an [[identity.ldap]] name"
                        ),
                    );
                }
            }
            for (i, name) in order.iter().enumerate() {
                if order[..i].contains(name) {
                    reader.at_opt(span(), format!("identity.order lists `{name}` twice"));
                }
            }
            for name in password_sources {
                if !order.iter().any(|n| n == name) {
                    reader.at_opt(
                        span(),
                        format!("identity.order leaves out `{name}`: every configured source must be listed"),
                    );
                }
            }
        }
    }
}

impl Config {
    /// `[login]`: its values, and an issuer that exists and accepts the
    /// page's client id as an audience.
    fn check_login(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        let Some(login) = &self.login else { return };
        for (key, message) in login.problems() {
            let span = lookup(root, &["login", key]).or_else(|| lookup(root, &["login"]));
            reader.at_opt(span, format!("login.{key}: {message}"));
        }
        let span = || lookup(root, &["login", "issuer"]);
        match self.identity.oidc.iter().find(|o| o.name == login.issuer) {
            None => reader.at_opt(
                span(),
                format!(
                    "login.issuer `{}` is not the name of an [[identity.oidc]]",
                    login.issuer
                ),
            ),
            Some(oidc) if !oidc.audiences.contains(&login.client_id) => reader.at_opt(
                lookup(root, &["login", "client_id"]),
                format!(
                    "login.client_id `{}` must be one of identity.oidc `{}`'s audiences (its ID tokens carry it)",
                    login.client_id, oidc.name
                ),
            ),
            Some(_) => {}
        }
    }
}

impl Config {
    /// `[[notifications.endpoints]]`: each one's values and unique names
    /// (a name is its queue's directory).
    fn check_notifications(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        let endpoints = &self.notifications.endpoints;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let index = i.to_string();
            let span = |key: &str| {
                lookup(root, &["notifications", "endpoints", &index, key])
                    .or_else(|| lookup(root, &["notifications", "endpoints", &index]))
            };
            for (key, message) in endpoint.problems() {
                reader.at_opt(
                    span(key),
                    format!("notifications endpoint `{}`: {message}", endpoint.name),
                );
            }
            if endpoints[..i].iter().any(|e| e.name == endpoint.name) {
                reader.at_opt(
                    span("name"),
                    format!(
                        "notifications endpoint name `{}` is used twice",
                        endpoint.name
                    ),
                );
            }
        }
    }
}

impl Config {
    /// `[[upstream]]`: each one's values, unique names, and prefixes that
    /// do not overlap (with first-match routing, an overlap would silently
    /// hide part of the later upstream).
    fn check_upstreams(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        for (i, upstream) in self.upstream.iter().enumerate() {
            let index = i.to_string();
            for (key, message) in upstream.problems() {
                let span = lookup(root, &["upstream", &index, key])
                    .or_else(|| lookup(root, &["upstream", &index]));
                reader.at_opt(span, format!("upstream `{}`: {message}", upstream.name));
            }
            for earlier in &self.upstream[..i] {
                if earlier.name == upstream.name {
                    let span = lookup(root, &["upstream", &index, "name"]);
                    reader.at_opt(
                        span,
                        format!("upstream name `{}` is used twice", upstream.name),
                    );
                }
                if upstream::overlap(&earlier.prefix, &upstream.prefix) {
                    let span = lookup(root, &["upstream", &index, "prefix"]);
                    reader.at_opt(
                        span,
                        format!(
                            "upstream `{}`: prefix `{}` overlaps `{}` of upstream `{}`",
                            upstream.name, upstream.prefix, earlier.prefix, earlier.name
                        ),
                    );
                }
            }
        }
    }
}

/// The span of the key at `path` (for pointing at it), if present.
fn lookup(root: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    lookup_key(root, path)
}

fn lookup_key(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => lookup_key(inner, rest),
        // An array of tables (`[[identity.ldap]]`): the next part is the
        // index, as serde_ignored writes it.
        DeValue::Array(items) => {
            let (index, rest) = rest.split_first()?;
            let item = items.get(index.parse::<usize>().ok()?)?;
            match (item.get_ref(), rest.is_empty()) {
                (_, true) => Some(item.span()),
                (DeValue::Table(inner), false) => lookup_key(inner, rest),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A secret kept in a file of its own (`key` names the setting, for the
/// message): its first line, trimmed, which must not be empty. What
/// `serve` reads at start and `check-config` reads to say so.
pub fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.is_empty() {
        return Err(format!("{key} {}: empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sources_are_read_in_order_and_checked() {
        let text = "[[identity.ldap]]\nname = \"corp\"\nurls = [\"ldaps://dc1\", \"ldaps://dc2\"]\nuser_base = \"dc=corp\"\n[identity.ldap.groups]\nfrom = \"search\"\nbase = \"ou=groups,dc=corp\"\nnested = \"walk\"\n";
        let config = Config::parse(text).unwrap();
        assert_eq!(config.identity.order(), ["file", "corp"]);
        let ldap = &config.identity.ldap[0];
        assert_eq!(ldap.user_filter, "(uid={username})");
        assert_eq!(ldap.groups.from, GroupsFrom::Search);
        assert_eq!(ldap.groups.nested, Nested::Walk);

        let walk_by_uid = text.replace(
            "nested = \"walk\"",
            "nested = \"walk\"\nfilter = \"(memberUid={username})\"",
        );
        assert_eq!(
            problems(&walk_by_uid),
            [
                "5:16: identity.ldap `corp`: groups.nested = \"walk\" needs a groups.filter with {dn}"
            ]
        );

        let ordered = format!("[identity]\norder = [\"corp\", \"file\"]\n{text}");
        let config = Config::parse(&ordered).unwrap();
        assert_eq!(config.identity.order(), ["corp", "file"]);

        assert_eq!(
            problems(
                "[identity]\norder = [\"file\", \"nope\"]\n[[identity.ldap]]\nname = \"corp\"\nurls = [\"http://x\"]\nuser_base = \"dc=x\"\nuser_filter = \"(uid=alice)\"\nkye = 1\n"
            ),
            [
                "2:1: identity.order names `nope`, which is neither `file` nor an [[identity.ldap]] name",
                "2:1: identity.order leaves out `corp`: every configured source must be listed",
                "5:1: identity.ldap `corp`: `http://x` is not an ldap:// or ldaps:// URL",
                "7:1: identity.ldap `corp`: user_filter must contain {username}",
                "8:1: unknown key `identity.ldap.0.kye`",
            ]
        );
    }

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| match p.location {
                Some((l, c)) => format!("{l}:{c}: {}", p.message),
                None => p.message,
            })
            .collect()
    }

    #[test]
    fn upstreams_are_checked_one_by_one_and_their_prefixes_must_not_overlap() {
        let config = Config::parse(
            "[[upstream]]\nname = \"hub\"\nprefix = \"mirror\"\nurl = \"https://registry-1.docker.io\"\n\
             default_namespace = \"library\"\n[upstream.cache]\ntag_max_age_secs = 60\n\n\
             [[upstream]]\nname = \"vendor\"\nprefix = \"vendor/images\"\nurl = \"http://10.0.0.9:5000\"\n\
             strip_prefix = false\npush = true\n",
        )
        .unwrap();
        let [hub, vendor] = &config.upstream[..] else {
            panic!("two upstreams: {:?}", config.upstream)
        };
        assert!(hub.strip_prefix && !hub.push && hub.timeout_secs == 30);
        assert_eq!(hub.cache.as_ref().map(|c| c.tag_max_age_secs), Some(60));
        assert!(hub.routes("mirror/alpine") && !hub.routes("mirror") && !hub.routes("mirrors/x"));
        assert!(!vendor.strip_prefix && vendor.push && vendor.routes("vendor/images/a/b"));

        assert_eq!(
            problems(
                "[[upstream]]\nname = \"a\"\nprefix = \"team\"\nurl = \"https://a.example\"\n\
                 [[upstream]]\nname = \"b\"\nprefix = \"team/sub\"\nurl = \"ftp://b.example/v2\"\n\
                 push = true\nusername = \"ci\"\n[upstream.cache]\n\
                 [[upstream]]\nname = \"a\"\nprefix = \"Bad//name\"\nurl = \"https://c.example\"\n",
            ),
            [
                "7:1: upstream `b`: prefix `team/sub` overlaps `team` of upstream `a`",
                "8:1: upstream `b`: url must be an https:// or http:// URL with a host and no path",
                "9:1: upstream `b`: push: a pull-through cache is read-only, and push = true needs no [upstream.cache]",
                "10:1: upstream `b`: username needs password_file, and password_file username",
                "13:1: upstream name `a` is used twice",
                "14:1: upstream `a`: prefix `Bad//name` is not a repository name (`mirror`, `vendor/images`)",
            ]
        );
    }

    #[test]
    fn notifications_endpoints_are_read_with_defaults_and_checked() {
        let config = Config::parse(
            "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"https://ci.example/hook\"\n\
             [notifications.endpoints.headers]\nx-source = \"portcullis\"\n",
        )
        .unwrap();
        let ci = &config.notifications.endpoints[0];
        assert_eq!(ci.repositories, ["**"]);
        assert_eq!(ci.actions, ["push", "pull", "mount", "delete"]);
        assert_eq!((ci.timeout_secs, ci.max_pending), (5, 10_000));
        assert_eq!(ci.headers["x-source"], "portcullis");
        assert_eq!(
            config.notifications.queue_dir(Path::new("/srv/data")),
            PathBuf::from("/srv/data/_notifications")
        );
        assert_eq!(
            problems(
                "[[notifications.endpoints]]\nname = \"a\"\nurl = \"ftp://x\"\n\
                 [[notifications.endpoints]]\nname = \"a\"\nurl = \"https://u:p@x\"\n\
                 repositories = [\"team/**x\"]\nactions = [\"pull\", \"tag\"]\nbackoff_max_secs = 0\n\
                 [[notifications.endpoints]]\nname = \"../up\"\nurl = \"http://x\"\n",
            ),
            [
                "3:1: notifications endpoint `a`: url must be an http:// or https:// URL with a host",
                // Without the key it is about, the endpoint's table.
                "4:1: notifications endpoint `a`: backoff_initial_ms must not be longer than backoff_max_secs",
                "5:1: notifications endpoint name `a` is used twice",
                "6:1: notifications endpoint `a`: url must not hold credentials (use token_file)",
                "7:1: notifications endpoint `a`: repositories: repository pattern `team/**x`: `**` must be a whole path segment",
                "8:1: notifications endpoint `a`: actions: `tag` is not one of push, pull, mount, delete",
                "9:1: notifications endpoint `a`: backoff_max_secs must be positive",
                "11:1: notifications endpoint `../up`: name must be letters, digits, `.`, `_` or `-`, not starting with `.` (it names the queue's directory)",
            ]
        );
    }

    #[test]
    fn the_v1_backend_is_an_http_base_and_the_engine_bound_a_version() {
        let config = Config::parse(
            "[v1]\nbackend = \"http://10.0.0.5:5000\"\nv1_only_engines_below = \"1.10\"\n",
        )
        .unwrap();
        assert_eq!(config.v1.backend.as_deref(), Some("http://10.0.0.5:5000"));
        assert_eq!(config.v1.backend_timeout_secs, 30, "the default");
        let config = Config::parse("[v1]\nbackend_timeout_secs = 5\n").unwrap();
        assert_eq!(config.v1.backend_timeout_secs, 5);
        assert_eq!(
            problems("[v1]\nbackend = \"http://b:5000\"\nbackend_timeout_secs = 0\n"),
            ["3:1: v1.backend_timeout_secs must be positive"]
        );
        assert_eq!(
            problems("[v1]\nbackend = \"https://10.0.0.5/v1\"\n"),
            ["2:1: v1.backend must be an http:// URL with a host and no path"]
        );
        assert_eq!(
            problems("[v1]\nv1_only_engines_below = \"one.ten\"\n"),
            [
                "2:1: v1.v1_only_engines_below must be a version such as `1.10`, not `one.ten`",
                "2:1: v1.v1_only_engines_below needs v1.backend"
            ]
        );
    }

    #[test]
    fn tls_is_read_and_checked() {
        let config = Config::parse(
            "[server]\nlisten = \"0.0.0.0:443\"\n[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nredirect_http = \"0.0.0.0:80\"\n",
        )
        .unwrap();
        let tls = config.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(
            tls.redirect_http,
            Some(SocketAddr::from(([0, 0, 0, 0], 80)))
        );
        assert_eq!(config.server.scheme(), "https");
        assert_eq!(
            problems("[server.tls]\ncert = \"c.pem\"\nkye = \"k.pem\"\n"),
            [
                "1:1: in [server]: missing field `key`",
                "3:1: unknown key `server.tls.kye`",
            ]
        );
        assert_eq!(
            problems(
                "[server]\nlisten = \"127.0.0.1:80\"\n[server.tls]\ncert = \"\"\nkey = \"k\"\nredirect_http = \"127.0.0.1:80\"\n"
            ),
            [
                "4:1: server.tls.cert must not be empty",
                "6:1: server.tls.redirect_http must differ from server.listen"
            ]
        );
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let config = Config::default();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.storage.root, PathBuf::from("./data"));
    }

    #[test]
    fn values_are_read() {
        let config = Config::parse(
            "[server]\nlisten = \"0.0.0.0:5001\"\n[storage]\nroot = \"/srv/r\"\n[log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:5001");
        assert_eq!(config.storage.root, PathBuf::from("/srv/r"));
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn every_problem_is_listed_with_its_place() {
        let text = "\
[server]
lisen = \"0.0.0.0:1\"
[storage]
root = 5
[log]
level = \"info\"
colour = true
[tls]
";
        let found = problems(text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("2:1: unknown key `server.lisen`"),
            "{found:#?}"
        );
        assert!(found[1].starts_with("4:8: in [storage]"), "{found:#?}");
        assert!(
            found[2].starts_with("7:1: unknown key `log.colour`"),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with("8:2: unknown section or key `tls`"),
            "{found:#?}"
        );
    }

    #[test]
    fn a_type_error_does_not_hide_the_other_problems_of_its_section() {
        let found = problems(
            "[storage]\nroot = 5\nupload_max_idle_secs = 0\ncolour = 1\nsweep_interval_secs = \"1h\"\n",
        );
        let expected = [
            "2:8: in [storage]",
            "3:1: storage.upload_max_idle_secs must be positive",
            "4:1: unknown key `storage.colour`",
            "5:23: in [storage]",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (found, expected) in found.iter().zip(expected) {
            assert!(found.starts_with(expected), "{found} is not {expected}…");
        }
    }

    #[test]
    fn bad_values_are_reported() {
        let found = problems("[server]\nlisten = \"nowhere\"\n[log]\nlevel = \"[[[\"\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("2:10: in [server]"), "{found:#?}");
        assert!(found[1].starts_with("4:1: log.level"), "{found:#?}");
    }

    #[test]
    fn upload_bounds_must_be_positive() {
        let found = problems(
            "[storage]\nupload_max_idle_secs = 0\nmax_uploads_per_account = 0\nsweep_interval_secs = 0\n",
        );
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with("2:1: storage.upload_max_idle_secs"),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with("4:1: storage.sweep_interval_secs"),
            "{found:#?}"
        );
    }

    #[test]
    fn connection_limits_must_be_positive() {
        let found = problems("[server]\nidle_timeout_secs = 0\nmax_connections = 0\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("2:1: server.idle_timeout_secs"),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("3:1: server.max_connections"),
            "{found:#?}"
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let found = problems("[server\nlisten = 1\n");
        assert!(!found.is_empty());
        assert!(found[0].starts_with("1:"), "{found:#?}");
    }
}
