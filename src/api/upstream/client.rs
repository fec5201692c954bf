//! The connections to one upstream registry: https (HTTP/2 when the
//! upstream offers it in ALPN) or plain http, a bounded number of requests
//! in flight, a bounded wait for each answer's head, and a body that may
//! not stall for longer than that between bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::forward::IdleLimited;
use crate::config::UpstreamConfig;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why a request got no answer. The causes name the upstream's address:
/// they are for the log, never for the client.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no turn among the {0} requests in flight within the timeout")]
    Busy(usize),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(#[from] hyper_util::client::legacy::Error),
}

pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Body>,
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl Client {
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let connector = crate::client_tls::connector(config.ca_file.as_deref(), timeout, false)
            .map_err(|e| format!("upstream `{}`: {e}", config.name))?;
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_connections)
            .build(connector);
        Ok(Self {
            inner,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            max: config.max_connections,
            timeout,
        })
    }

    /// A turn among the requests in flight, for a request sent on a
    /// connection of its own (a relayed blob): held until its body ends.
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit, SendError> {
        tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| SendError::Busy(self.max))
            .map(|permit| permit.expect("the semaphore is never closed"))
    }

    /// How long the upstream may take to answer a request's head.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` (an absolute URI) and waits for the answer's head.
    /// The body holds a turn until it is read or dropped.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, SendError> {
        let started = Instant::now();
        let permit = self.turn().await?;
        let left = self.timeout.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(left, self.inner.request(request))
            .await
            .map_err(|_| SendError::Timeout(self.timeout))??;
        let (parts, body) = answer.into_parts();
        // A stalled upstream must not hold a client (and a turn) forever.
        let body = IdleLimited::new(body, self.timeout).holding(permit);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}
