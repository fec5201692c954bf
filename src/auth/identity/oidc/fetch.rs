//! Reading an issuer's JSON documents (discovery, keys, the token
//! endpoint's answer to the sign-in page): over https unless
//! the configuration allows plain http, each request under the issuer's
//! timeout, each body bounded, so that a slow or hostile issuer can hold a
//! login for no longer than the timeout nor fill memory.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::config::OidcConfig;

/// The largest document read: key sets and discovery documents are a few
/// kilobytes.
const MAX_DOCUMENT: usize = 1 << 20;

pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    allow_http: bool,
}

impl Fetcher {
    pub fn new(config: &OidcConfig) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let connector =
            crate::client_tls::connector(config.ca_file.as_deref(), timeout, !config.allow_http)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            client,
            timeout,
            allow_http: config.allow_http,
        })
    }

    /// Whether `url` may be fetched: https, or http when allowed.
    pub fn allows(&self, url: &str) -> bool {
        url.starts_with("https://") || (self.allow_http && url.starts_with("http://"))
    }

    /// GETs `url` and parses its JSON body. The error says what went wrong
    /// for the operator's log (it never reaches a client).
    pub async fn json<T: DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let request = hyper::Request::get(self.uri(url)?)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| format!("{url}: {e}"))?;
        self.send(url, request).await
    }

    /// POSTs a form to `url` (the token endpoint), with HTTP Basic
    /// credentials when given, and parses the JSON answer.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<T, String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = hyper::Request::post(self.uri(url)?)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some((user, password)) = basic {
            // RFC 6749, 2.3.1: both parts form-encoded before Basic.
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(user), encode(password));
            let value = format!("Basic {}", data_encoding::BASE64.encode(pair.as_bytes()));
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{url}: {e}"))?;
        self.send(url, request).await
    }

    fn uri(&self, url: &str) -> Result<hyper::Uri, String> {
        if !self.allows(url) {
            return Err(format!("{url}: not an https:// URL"));
        }
        url.parse().map_err(|e| format!("{url}: {e}"))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: &str,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<T, String> {
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{url}: {}", crate::client_tls::error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(format!("{url}: answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| format!("{url}: body unreadable or over 1 MiB: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not the JSON expected: {e}"))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{url}: no answer within {} s", self.timeout.as_secs()))?
    }
}
