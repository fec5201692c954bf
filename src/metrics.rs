//! The process' metrics, served at `/metrics` in the OpenMetrics text
//! format (which Prometheus scrapes), with the Prometheus project's own
//! crate. One [`Metrics`] per server ([`crate::AppState`]), so that servers
//! sharing a process (the tests') count apart.
//!
//! | family (`portcullis_…`)              | labels                          |
//! |--------------------------------------|---------------------------------|
//! | `http_request_duration_seconds`      | route, method, status, backend  |
//! | `http_request_body_bytes_total`      | route (declared lengths)        |
//! | `http_response_body_bytes_total`     | route (declared lengths)        |
//! | `token_requests_total`               | result, reason                  |
//! | `logins_total`                       | source, credential, result      |
//! | `login_duration_seconds`             | source                          |
//! | `upload_sessions_open`               | (this replica's)                |
//! | `storage_operations_total`           | backend, operation, result      |
//! | `storage_operation_duration_seconds` | backend, operation              |
//! | `cache_requests_total`               | upstream, result                |
//! | `notifications_total`                | endpoint, result (`delivered`, `dropped`) |
//! | `notification_failures_total`        | endpoint (failed POSTs)         |
//! | `notifications_pending`              | endpoint                        |
//! | `notification_delivery_seconds`      | endpoint                        |
//! | `build_info`                         | version                         |
//!
//! Requests are counted by the latency histogram alone (its `_count` is
//! the number of requests with those labels): one labelled lookup per
//! request, not two, and the byte counters are per route, resolved once at
//! start, so that counting costs the small requests little (the
//! benchmark's `ops` section measures it).

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What the content type of `/metrics` says.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub backend: Cow<'static, str>,
}

/// Every `route` label (`Route::label`, and `unknown` for a request that
/// parsed as none): the byte counters are made for each at start.
pub const ROUTES: &[&str] = &[
    "token",
    "jwks",
    "healthz",
    "readyz",
    "login",
    "metrics",
    "v1",
    "v2_base",
    "v2_catalog",
    "v2_tags",
    "v2_manifest",
    "v2_blob",
    "v2_upload",
    "v2_referrers",
    "unknown",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    source: String,
    credential: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    backend: &'static str,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    upstream: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// One notification endpoint's series, resolved once at start
/// ([`Metrics::notifications`]) and updated by its tasks.
#[derive(Clone)]
pub struct NotifyMetrics {
    /// Events the receiver acknowledged.
    pub delivered: Counter,
    /// Events dropped: the queue full, or unwritable.
    pub dropped: Counter,
    /// POSTs that failed (refused, timed out, not 2xx).
    pub failures: Counter,
    /// Events queued, not yet acknowledged.
    pub pending: Gauge,
    /// Each POST's time, failed or not.
    pub delivery_seconds: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    /// `metrics.enabled`: off, nothing is counted (what the benchmark
    /// compares against) and nothing served.
    enabled: bool,
    registry: Registry,
    requests: Histograms<RequestLabels>,
    /// Per route, in the order of [`ROUTES`].
    bytes_in: Vec<Counter>,
    bytes_out: Vec<Counter>,
    tokens: Family<TokenLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    login_durations: Histograms<SourceLabel>,
    uploads_open: Gauge,
    storage: Family<StorageLabels, Counter>,
    storage_durations: Histograms<OperationLabels>,
    cache: Family<CacheLabels, Counter>,
    notifications: Family<NotifyLabels, Counter>,
    notification_failures: Family<EndpointLabel, Counter>,
    notifications_pending: Family<EndpointLabel, Gauge>,
    notification_seconds: Histograms<EndpointLabel>,
}

/// Request latencies from 0.1 ms to about 6.5 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Logins from 0.1 ms (a cached one) to about 13 s (a slow directory).
fn login_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// POSTs to a receiver from 1 ms to about 65 s.
fn delivery_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new(enabled: bool) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests: Histograms<RequestLabels> = Family::new_with_constructor(request_buckets);
        registry.register(
            "http_request_duration_seconds",
            "Requests answered (_count) and their time to the response head (a streamed body goes on after it)",
            requests.clone(),
        );
        let per_route = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<RouteLabel, Counter>::default();
            registry.register(name, help, family.clone());
            ROUTES
                .iter()
                .map(|route| family.get_or_create(&RouteLabel { route }).clone())
                .collect::<Vec<_>>()
        };
        let bytes_in = per_route(
            &mut registry,
            "http_request_body_bytes",
            "Request body bytes, as declared by Content-Length",
        );
        let bytes_out = per_route(
            &mut registry,
            "http_response_body_bytes",
            "Response body bytes, as the head declares them (a body cut short counts whole)",
        );
        let tokens = Family::default();
        registry.register(
            "token_requests",
            "Token requests, granted or refused, by reason",
            tokens.clone(),
        );
        let logins = Family::default();
        registry.register(
            "logins",
            "Credentials checked at the token endpoint, by identity source, credential kind and result",
            logins.clone(),
        );
        let login_durations: Histograms<SourceLabel> = Family::new_with_constructor(login_buckets);
        registry.register(
            "login_duration_seconds",
            "Time to check a credential, by the identity source that decided",
            login_durations.clone(),
        );
        let uploads_open = Gauge::default();
        registry.register(
            "upload_sessions_open",
            "Upload sessions this replica knows of",
            uploads_open.clone(),
        );
        let storage = Family::default();
        registry.register(
            "storage_operations",
            "Operations on the store, by backend, operation and result (ok, not_found, error)",
            storage.clone(),
        );
        let storage_durations: Histograms<OperationLabels> =
            Family::new_with_constructor(request_buckets);
        registry.register(
            "storage_operation_duration_seconds",
            "Time an operation on the store took (a read: until its stream was open)",
            storage_durations.clone(),
        );
        let cache = Family::default();
        registry.register(
            "cache_requests",
            "Pulls under a pull-through cache's prefix, by upstream and result (hit, miss; pass: neither read nor kept)",
            cache.clone(),
        );
        let notifications = Family::default();
        registry.register(
            "notifications",
            "Notification events, by endpoint: delivered (acknowledged with a 2xx) or dropped (its queue full)",
            notifications.clone(),
        );
        let notification_failures = Family::default();
        registry.register(
            "notification_failures",
            "Failed notification POSTs (refused, timed out or not 2xx), each retried",
            notification_failures.clone(),
        );
        let notifications_pending = Family::default();
        registry.register(
            "notifications_pending",
            "Notification events queued for an endpoint, not yet acknowledged",
            notifications_pending.clone(),
        );
        let notification_seconds: Histograms<EndpointLabel> =
            Family::new_with_constructor(delivery_buckets);
        registry.register(
            "notification_delivery_seconds",
            "Time of each notification POST, failed or not",
            notification_seconds.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running build", build);
        Self {
            enabled,
            registry,
            requests,
            bytes_in,
            bytes_out,
            tokens,
            logins,
            login_durations,
            uploads_open,
            storage,
            storage_durations,
            cache,
            notifications,
            notification_failures,
            notifications_pending,
            notification_seconds,
        }
    }

    /// What counts the operations on a store of `backend`; `None` when
    /// nothing is counted (the driver is then not wrapped at all).
    pub fn storage_observer(
        &self,
        backend: &'static str,
    ) -> Option<std::sync::Arc<dyn crate::storage::metered::Observer>> {
        self.enabled.then(|| {
            std::sync::Arc::new(StorageObserver {
                backend,
                operations: self.storage.clone(),
                durations: self.storage_durations.clone(),
            }) as _
        })
    }

    /// A pull under a cached upstream's prefix, answered from the cache
    /// (`hit`) or from the upstream (`miss`).
    pub fn cache(&self, upstream: &str, result: &'static str) {
        if !self.enabled {
            return;
        }
        self.cache
            .get_or_create(&CacheLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    /// The series of the notification endpoint `endpoint` (a configured
    /// name, so the labels stay bounded); with metrics off, series of
    /// their own that nothing serves.
    pub fn notifications(&self, endpoint: &str) -> NotifyMetrics {
        if !self.enabled {
            return NotifyMetrics {
                delivered: Counter::default(),
                dropped: Counter::default(),
                failures: Counter::default(),
                pending: Gauge::default(),
                delivery_seconds: delivery_buckets(),
            };
        }
        let result = |result| {
            self.notifications
                .get_or_create(&NotifyLabels {
                    endpoint: endpoint.to_owned(),
                    result,
                })
                .clone()
        };
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        NotifyMetrics {
            delivered: result("delivered"),
            dropped: result("dropped"),
            failures: self.notification_failures.get_or_create(&label).clone(),
            pending: self.notifications_pending.get_or_create(&label).clone(),
            delivery_seconds: self.notification_seconds.get_or_create(&label).clone(),
        }
    }

    /// One answered request.
    pub fn request(
        &self,
        labels: RequestLabels,
        took: Duration,
        body_in: Option<u64>,
        body_out: Option<u64>,
    ) {
        if !self.enabled {
            return;
        }
        let route = ROUTES.iter().position(|r| *r == labels.route);
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let Some(route) = route else { return };
        if let Some(n) = body_in.filter(|n| *n > 0) {
            self.bytes_in[route].inc_by(n);
        }
        if let Some(n) = body_out.filter(|n| *n > 0) {
            self.bytes_out[route].inc_by(n);
        }
    }

    /// A token request's outcome: `granted`, or refused for `reason`.
    pub fn token(&self, result: &'static str, reason: &'static str) {
        if !self.enabled {
            return;
        }
        self.tokens
            .get_or_create(&TokenLabels { result, reason })
            .inc();
    }

    /// A credential checked: by which source (`unknown` when none decided),
    /// of which kind, with what result, in how long.
    pub fn login(
        &self,
        source: &str,
        credential: &'static str,
        result: &'static str,
        took: Duration,
    ) {
        self.logins
            .get_or_create(&LoginLabels {
                source: source.to_owned(),
                credential,
                result,
            })
            .inc();
        self.login_durations
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The exposition, with the gauges read now.
    pub fn render(&self, uploads_open: usize) -> String {
        self.uploads_open.set(uploads_open as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

struct StorageObserver {
    backend: &'static str,
    operations: Family<StorageLabels, Counter>,
    durations: Histograms<OperationLabels>,
}

impl crate::storage::metered::Observer for StorageObserver {
    fn operation(
        &self,
        operation: &'static str,
        outcome: crate::storage::metered::Outcome,
        took: Duration,
    ) {
        let backend = self.backend;
        self.operations
            .get_or_create(&StorageLabels {
                backend,
                operation,
                result: outcome.label(),
            })
            .inc();
        self.durations
            .get_or_create(&OperationLabels { backend, operation })
            .observe(took.as_secs_f64());
    }
}
