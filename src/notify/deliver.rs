//! One endpoint's delivery: the oldest segments of its queue (up to
//! [`POST_EVENTS`] events, or one larger segment) POSTed as one envelope,
//! again with exponential back-off until the receiver answers 2xx (each
//! attempt taking the oldest again, so events queued meanwhile join
//! them), then deleted; the next ones after them, so events arrive in the
//! order they were made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::event::MEDIA_TYPE;
use super::queue::{Queue, Segment};
use crate::config::NotifyEndpointConfig;
use crate::metrics::NotifyMetrics;

/// What a receiver's answer may hold that is read (and thrown away), so
/// that the connection can be used again.
const MAX_ANSWER: usize = 64 << 10;

/// Events one POST carries at most, when several segments wait (a
/// receiver back after an outage gets its backlog in few requests).
pub const POST_EVENTS: u64 = 64;

/// A receiver: where and how to POST, and how long to wait.
pub struct Receiver {
    pub name: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Receiver {
    /// Reads `token_file` (never logged) and builds the client.
    pub fn new(config: &NotifyEndpointConfig) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let context = |e: String| format!("notifications endpoint `{}`: {e}", config.name);
        let connector = crate::client_tls::connector(None, timeout, false).map_err(context)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        let uri = config
            .url
            .parse()
            .map_err(|e| context(format!("url: {e}")))?;
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| context(format!("headers: {e}")))?;
            let value = axum::http::HeaderValue::from_str(value)
                .map_err(|e| context(format!("headers: {e}")))?;
            headers.insert(name, value);
        }
        if let Some(file) = &config.token_file {
            let token = crate::config::read_secret("notifications.endpoints.token_file", file)
                .map_err(context)?;
            let mut value = axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| context("token_file: not a header value".into()))?;
            value.set_sensitive(true);
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(MEDIA_TYPE),
        );
        headers.insert(
            axum::http::header::USER_AGENT,
            axum::http::HeaderValue::from_static(concat!("portcullis/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Self {
            name: config.name.clone(),
            client,
            uri,
            headers,
            timeout,
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_secs(config.backoff_max_secs),
        })
    }

    /// Where it is, for people: scheme, host and port.
    pub fn address(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let host = self.uri.host().unwrap_or("");
        match self.uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        }
    }

    /// One attempt: `Ok` on a 2xx, else why not (for the log: no URL, which
    /// may hold credentials, and no header).
    async fn post(&self, body: Bytes) -> Result<(), String> {
        let mut request = hyper::Request::post(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *request.headers_mut() = self.headers.clone();
        let attempt = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    format!("not delivered: {}", crate::client_tls::error_chain(&e))
                })?;
            let status = response.status();
            // Read what it says (bounded) so the connection is kept.
            let _ = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            match status.is_success() {
                true => Ok(()),
                false => Err(format!("the receiver answered {status}")),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// `{"events":[…]}` of a segment's lines, each already an event's JSON;
/// a line that is not JSON (a disk's corruption) is left out and logged.
fn envelope(name: &str, lines: &[String]) -> Bytes {
    let mut body = String::from("{\"events\":[");
    let mut first = true;
    for line in lines {
        if serde_json::from_str::<serde::de::IgnoredAny>(line).is_err() {
            tracing::error!(
                endpoint = name,
                "notifications: an unreadable event in the queue, left out"
            );
            continue;
        }
        if !first {
            body.push(',');
        }
        body.push_str(line);
        first = false;
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// Delivers the queue until `stop`: after it, the attempt in flight is
/// finished (within the timeout) and nothing more is sent.
pub async fn run(
    receiver: Receiver,
    queue: Arc<Queue>,
    written: Arc<tokio::sync::Notify>,
    metrics: NotifyMetrics,
    stop: CancellationToken,
) {
    let mut backoff = receiver.backoff_initial;
    loop {
        let segments = queue.oldest(POST_EVENTS);
        if segments.is_empty() {
            tokio::select! {
                () = written.notified() => continue,
                () = stop.cancelled() => return,
            }
        }
        // Read in order up to the first that cannot be: that one is
        // dropped when it comes first, else the ones before it go alone.
        let to_read = segments.clone();
        let (lines, read, failed) = blocking(&queue, move |q| {
            let mut lines = Vec::new();
            for (i, segment) in to_read.iter().enumerate() {
                match q.read(*segment) {
                    Ok(more) => lines.extend(more),
                    Err(e) => return Ok((lines, i, Some(e))),
                }
            }
            Ok((lines, to_read.len(), None))
        })
        .await
        .unwrap_or_else(|e| (Vec::new(), 0, Some(e)));
        if let (0, Some(e)) = (read, &failed) {
            let segment = segments[0];
            tracing::error!(endpoint = %receiver.name, error = %e, "notifications: a queued batch cannot be read; dropped");
            metrics.dropped.inc_by(segment.events);
            remove(&receiver, &queue, &[segment], &metrics).await;
            continue;
        }
        let segments = &segments[..read];
        let events: u64 = segments.iter().map(|s| s.events).sum();
        let body = envelope(&receiver.name, &lines);
        if stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let result = receiver.post(body).await;
        metrics
            .delivery_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics.delivered.inc_by(events);
                remove(&receiver, &queue, segments, &metrics).await;
                backoff = receiver.backoff_initial;
            }
            // Retried from the top: what has been queued since joins the
            // same events in the next attempt, so a backlog goes in few
            // POSTs.
            Err(why) => {
                metrics.failures.inc();
                tracing::warn!(
                    endpoint = %receiver.name,
                    events,
                    retry_in = ?backoff,
                    "notifications: {why}"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(receiver.backoff_max);
            }
        }
    }
}

/// Deletes segments that need no more sending, oldest first. A file that
/// cannot be deleted is sent again after a restart: at least once, never
/// lost.
async fn remove(
    receiver: &Receiver,
    queue: &Arc<Queue>,
    segments: &[Segment],
    metrics: &NotifyMetrics,
) {
    let segments = segments.to_vec();
    // Each one, whatever happened to the one before.
    let removed = blocking(queue, move |q| {
        let results: Vec<_> = segments.into_iter().map(|s| q.remove(s)).collect();
        results.into_iter().collect::<std::io::Result<()>>()
    })
    .await;
    if let Err(e) = removed {
        tracing::error!(endpoint = %receiver.name, error = %e, "notifications: a delivered batch could not be removed");
    }
    metrics.pending.set(queue.pending() as i64);
}

/// Runs `f` on the queue off the async threads.
pub async fn blocking<T: Send + 'static>(
    queue: &Arc<Queue>,
    f: impl FnOnce(&Queue) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let queue = Arc::clone(queue);
    tokio::task::spawn_blocking(move || f(&queue))
        .await
        .map_err(std::io::Error::other)?
}
