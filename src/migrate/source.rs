//! The legacy registry as the migration reads it: its search (the list of
//! repositories), tags, ancestries, image JSON and layers, over plain HTTP
//! on the private network where it runs (the `[v1] backend` address).
//! Nothing is written to it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::{Authority, Scheme};
use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::client_tls::error_chain;

/// How long the backend may take to answer a request's head. A layer's body
/// may take as long as it takes; an answer that never starts is a dead
/// backend.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest metadata answer read (a tag list, an ancestry, an image JSON).
const MAX_METADATA: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Url(String),
    #[error("{path}: not found on the legacy registry")]
    NotFound { path: String },
    #[error("{path}: the legacy registry answered {status}")]
    Status { path: String, status: StatusCode },
    #[error("{path}: {reason}")]
    Transport { path: String, reason: String },
    #[error("{path}: not the JSON expected: {reason}")]
    Json { path: String, reason: String },
}

/// An image's JSON as the backend serves it, and what it says about the layer.
pub struct ImageJson {
    /// The bytes exactly as served: the backend's checksum covers them.
    pub raw: Bytes,
    pub value: Value,
    /// The backend's checksums of JSON + layer (`sha256:…`), computed by it
    /// when the layer was pushed; empty when it has none.
    pub checksums: Vec<String>,
    /// The stored layer's size (`X-Docker-Size`), when the backend says.
    pub layer_size: Option<u64>,
}

pub struct Legacy {
    authority: Authority,
    client: Client<HttpConnector, Body>,
}

impl Legacy {
    /// `url` is `http://host:port`.
    pub fn new(url: &str) -> Result<Self, SourceError> {
        let bad = |why: &str| SourceError::Url(format!("--from-v1 {url}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(bad(
                "an http:// URL is needed (the legacy registry's private address)",
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("give the registry's base address, with no path"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { authority, client })
    }

    /// The answer's head to `GET path`; a non-success status is an error.
    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, SourceError> {
        let transport = |reason: String| SourceError::Transport {
            path: path.to_owned(),
            reason,
        };
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| transport(e.to_string()))?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| transport(e.to_string()))?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| transport(format!("no answer within {}s", ANSWER_TIMEOUT.as_secs())))?
            .map_err(|e| transport(error_chain(&e)))?;
        match answer.status() {
            s if s.is_success() => Ok(answer),
            StatusCode::NOT_FOUND => Err(SourceError::NotFound {
                path: path.to_owned(),
            }),
            status => Err(SourceError::Status {
                path: path.to_owned(),
                status,
            }),
        }
    }

    async fn get_bytes(&self, path: &str) -> Result<(hyper::HeaderMap, Bytes), SourceError> {
        let answer = self.get(path).await?;
        let (head, body) = answer.into_parts();
        let body = http_body_util::Limited::new(body, MAX_METADATA)
            .collect()
            .await
            .map_err(|e| SourceError::Transport {
                path: path.to_owned(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok((head.headers, body))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, SourceError> {
        let (_, body) = self.get_bytes(path).await?;
        serde_json::from_slice(&body).map_err(|e| SourceError::Json {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Every repository the backend's search index knows (`library/x` for
    /// the single-segment names).
    pub async fn repositories(&self) -> Result<Vec<String>, SourceError> {
        #[derive(serde::Deserialize)]
        struct Found {
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct Search {
            results: Vec<Found>,
        }
        let search: Search = self.get_json("/v1/search?q=").await?;
        let mut names: Vec<String> = search.results.into_iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The repository's tags and the image id each names.
    pub async fn tags(&self, repo: &str) -> Result<BTreeMap<String, String>, SourceError> {
        self.get_json(&format!("/v1/repositories/{repo}/tags"))
            .await
    }

    /// The image and its parents, the image first.
    pub async fn ancestry(&self, id: &str) -> Result<Vec<String>, SourceError> {
        self.get_json(&format!("/v1/images/{id}/ancestry")).await
    }

    pub async fn image_json(&self, id: &str) -> Result<ImageJson, SourceError> {
        let path = format!("/v1/images/{id}/json");
        let (headers, raw) = self.get_bytes(&path).await?;
        let value = serde_json::from_slice(&raw).map_err(|e| SourceError::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Ok(ImageJson {
            checksums: header("x-docker-checksum-payload")
                .map(simple_checksums)
                .unwrap_or_default(),
            layer_size: header("x-docker-size").and_then(|s| s.trim().parse().ok()),
            raw,
            value,
        })
    }

    /// The layer's body, streamed; hyper fails it if it ends before its
    /// `Content-Length`.
    pub async fn layer(&self, id: &str) -> Result<Incoming, SourceError> {
        Ok(self
            .get(&format!("/v1/images/{id}/layer"))
            .await?
            .into_body())
    }
}

/// The `sha256:<hex>` checksums in the backend's checksum header, whatever
/// list syntax it wrapped them in (0.9 sends a Python list's text).
fn simple_checksums(header: &str) -> Vec<String> {
    header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':' || c == '+'))
        .filter_map(|word| word.strip_prefix("sha256:"))
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|hex| format!("sha256:{}", hex.to_ascii_lowercase()))
        .collect()
}

/// The body's next chunk of data (trailers and empty frames skipped).
pub async fn next_chunk(body: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_read_out_of_the_backends_list_text() {
        let hex = "ab".repeat(32);
        assert_eq!(
            simple_checksums(&format!("[u'sha256:{hex}', u'tarsum+sha256:{hex}']")),
            [format!("sha256:{hex}")]
        );
        assert!(simple_checksums("sha256:short").is_empty());
    }

    #[test]
    fn only_a_plain_http_base_address_is_taken() {
        assert!(Legacy::new("http://10.0.0.5:5000").is_ok());
        assert!(Legacy::new("http://10.0.0.5:5000/").is_ok());
        for bad in ["https://x:5000", "http://x:5000/v1", "x:5000", ""] {
            assert!(Legacy::new(bad).is_err(), "{bad}");
        }
    }
}
