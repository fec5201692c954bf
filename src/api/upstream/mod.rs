//! Repository prefixes served by another v2 registry (`[[upstream]]`).
//!
//! A request whose repository is under an upstream's prefix is routed here
//! once it is authorized (the one check, by Portcullis' policies, on the
//! name the client used): it goes to the upstream with the name the
//! upstream knows (the prefix stripped or kept, Docker Hub's `library/`
//! added), with Portcullis' own credentials ([`auth`]), streamed both ways
//! ([`client`]). What comes back is Portcullis' answer: the upstream's
//! address never reaches the client (`Location` and `Link` rewritten, a
//! redirect to where the upstream keeps its blobs followed here), nor its
//! challenges or cookies, and an upstream that cannot be reached or does
//! not take Portcullis' credentials is a `503 UNAVAILABLE` naming the
//! upstream by its configured name only.
//!
//! A blob `GET` (no `Range`) from a plain-TCP HTTP/1 client to a plain-HTTP
//! upstream goes on a connection of its own, so that the body moves from
//! the upstream's socket to the client's with `splice` and never through
//! Portcullis' memory ([`zero_copy::fetch`], [`zero_copy::relay`]); any
//! answer but a `200` with a `Content-Length` (a redirect, a refused token,
//! an error) is asked for again on the pooled path, which handles them all.

mod auth;
mod cache;
mod client;

pub(super) use cache::serve as serve_cached;

use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};

use super::endpoint::{Endpoint, UploadStart};
use crate::config::UpstreamConfig;
use crate::error::{ApiError, ErrorCode};
use crate::reference::RepoName;
use crate::serve::zero_copy;
use auth::{Account, Challenge, Tokens};
use client::{Client, SendError};

/// Largest tag list read to put the client's repository name in it.
const MAX_LIST: usize = 16 << 20;

/// Repositories asked per page of an upstream's catalog, and at most in
/// all (a catalog is for people browsing, not for a whole Docker Hub).
const CATALOG_PAGE: usize = 1000;
const MAX_CATALOG: usize = 10_000;

/// Redirects followed for one blob (distribution sends one, to its storage).
const MAX_REDIRECTS: usize = 3;

/// Every configured upstream, in configuration order.
#[derive(Default)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
}

impl Upstreams {
    /// The repositories of every upstream whose configuration lists them
    /// in the built-in catalog, under the client's names (the catalog page
    /// sorts them with its own).
    pub async fn catalog(&self) -> Vec<String> {
        let mut names = Vec::new();
        for upstream in self.list.iter().filter(|u| u.config.catalog) {
            names.extend(upstream.catalog().await);
        }
        names
    }

    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, String> {
        let list = configs
            .iter()
            .map(|c| Upstream::new(c.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { list })
    }

    /// The upstreams `configs` name, for a reconfiguration: one whose
    /// settings did not change is kept as it is (its connections, tokens
    /// and cache knowledge), the others are made anew. Nothing of `self`
    /// changes; requests under way keep the upstream they were routed to.
    pub fn reconfigured(&self, configs: &[UpstreamConfig]) -> Result<Self, String> {
        let list = configs
            .iter()
            .map(|c| match self.list.iter().find(|u| u.config == *c) {
                Some(same) => Ok(Arc::clone(same)),
                None => Upstream::new(c.clone()).map(Arc::new),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { list })
    }

    /// What the upstreams are, for a reload's log line: each name, prefix
    /// and address.
    pub fn summary(&self) -> String {
        if self.list.is_empty() {
            return "none".into();
        }
        self.list
            .iter()
            .map(|u| format!("{} ({}/ at {})", u.config.name, u.config.prefix, u.base))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The upstream that serves `name`, if any (prefixes do not overlap,
    /// so at most one does).
    pub fn route(&self, name: &RepoName) -> Option<Arc<Upstream>> {
        self.list
            .iter()
            .find(|u| u.config.routes(name.as_str()))
            .cloned()
    }
}

/// One upstream registry.
pub struct Upstream {
    pub config: UpstreamConfig,
    /// `scheme://authority` of the upstream, without a trailing `/`.
    base: String,
    client: Client,
    account: Option<Account>,
    /// What the upstream's challenge asks for: learned from `GET /v2/`
    /// before the first request, and again from any later 401 (an upstream
    /// may start to want credentials, or change its token server).
    challenge: std::sync::Mutex<Option<Option<Challenge>>>,
    tokens: Tokens,
    /// `[upstream.cache]`: what this replica knows of the pull-through
    /// cache; `None` for a plain prefix.
    cache: Option<cache::Cache>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Upstreams are one per name (the configuration checks it).
impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        self.config.name == other.config.name
    }
}

impl Eq for Upstream {}

impl Upstream {
    fn new(config: UpstreamConfig) -> Result<Self, String> {
        let account = match (&config.username, &config.password_file) {
            (Some(username), Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "upstream `{}`: password_file {}: {e}",
                        config.name,
                        file.display()
                    )
                })?;
                let password = text.lines().next().unwrap_or_default().to_owned();
                Some(Account {
                    username: username.clone(),
                    password,
                })
            }
            _ => None,
        };
        let base = config.url.trim_end_matches('/').to_owned();
        Ok(Self {
            client: Client::new(&config)?,
            base,
            account,
            challenge: std::sync::Mutex::new(None),
            tokens: Tokens::default(),
            cache: config.cache.as_ref().map(cache::Cache::new),
            config,
        })
    }

    /// The name the upstream knows `local` by.
    pub fn remote(&self, local: &RepoName) -> String {
        let name = local.as_str();
        let rest = match self.config.strip_prefix {
            true => &name[self.config.prefix.len() + 1..],
            false => name,
        };
        match &self.config.default_namespace {
            Some(namespace) if !rest.contains('/') => format!("{namespace}/{rest}"),
            _ => rest.to_owned(),
        }
    }

    /// `backend=` of the request log.
    pub fn log_name(&self) -> String {
        format!("upstream:{}", self.config.name)
    }

    /// The client's name for the upstream's repository `remote`; `None`
    /// when no client name leads there (a kept prefix it lacks).
    fn local(&self, remote: &str) -> Option<String> {
        let prefix = &self.config.prefix;
        let name = match self.config.strip_prefix {
            false => remote.to_owned(),
            true => {
                // The short name where the default namespace was added.
                let short = self
                    .config
                    .default_namespace
                    .as_ref()
                    .and_then(|ns| remote.strip_prefix(ns.as_str())?.strip_prefix('/'))
                    .filter(|rest| !rest.contains('/'));
                format!("{prefix}/{}", short.unwrap_or(remote))
            }
        };
        RepoName::parse(&name)
            .ok()
            .filter(|n| self.config.routes(n.as_str()))
            .map(|n| n.as_str().to_owned())
    }

    /// The upstream's repositories under the client's names, for the
    /// built-in catalog (`catalog = true`); none, with a warning, when the
    /// upstream cannot list them.
    pub async fn catalog(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut next = Some(format!("{}/v2/_catalog?n={CATALOG_PAGE}", self.base));
        while let Some(target) = next.take() {
            let answer = self
                .send(
                    &Method::GET,
                    &target,
                    &HeaderMap::new(),
                    Body::empty(),
                    "registry:catalog:*",
                )
                .await;
            let answer = match answer {
                Ok(answer) if answer.status() == StatusCode::OK => answer,
                Ok(answer) => {
                    tracing::warn!(upstream = %self.config.name, status = %answer.status(), "the upstream does not list its repositories");
                    break;
                }
                Err(_) => break,
            };
            next = answer
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|link| {
                    link.split_once('<')?
                        .1
                        .split_once('>')
                        .map(|(u, _)| u.to_owned())
                })
                .filter(|u| u.starts_with("/v2/_catalog?"))
                .map(|u| format!("{}{u}", self.base));
            let Ok(bytes) = axum::body::to_bytes(answer.into_body(), MAX_LIST).await else {
                break;
            };
            let listed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let repositories = listed["repositories"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            names.extend(
                repositories
                    .iter()
                    .filter_map(|r| r.as_str())
                    .filter_map(|r| self.local(r)),
            );
            if names.len() >= MAX_CATALOG {
                tracing::warn!(upstream = %self.config.name, "the upstream's catalog is cut at {MAX_CATALOG} repositories");
                names.truncate(MAX_CATALOG);
                break;
            }
        }
        names
    }

    /// Whether this prefix is a pull-through cache.
    pub fn caches(&self) -> bool {
        self.cache.is_some()
    }

    fn unavailable(&self, why: &str) -> ApiError {
        ApiError::new(ErrorCode::Unavailable).message(format!(
            "the upstream registry `{}` {why}",
            self.config.name
        ))
    }

    /// The authorized request `endpoint` (`parts` + `body`), answered by the
    /// upstream; `public` is Portcullis' base URL, which replaces the
    /// upstream's in what comes back.
    /// `zero_copy`, the client connection's, when it can take a relayed
    /// body.
    pub async fn forward(
        &self,
        endpoint: &Endpoint,
        parts: &Parts,
        body: Body,
        public: &str,
        zero_copy: Option<zero_copy::Sender>,
    ) -> Result<Response<Body>, ApiError> {
        let local = endpoint
            .name()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound))?;
        let remote = self.remote(local);
        let path = parts.uri.path();
        let rest = path
            .strip_prefix("/v2/")
            .and_then(|p| p.strip_prefix(local.as_str()))
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound))?;
        let query = self.query(endpoint, parts.uri.query());
        let target = match query {
            Some(q) => format!("{}/v2/{remote}{rest}?{q}", self.base),
            None => format!("{}/v2/{remote}{rest}", self.base),
        };
        let scope = format!("repository:{remote}:{}", actions(endpoint));
        let relayable = matches!(endpoint, Endpoint::GetBlob { .. })
            && parts.method == Method::GET
            && !parts.headers.contains_key(header::RANGE);
        if let (true, Some(sender)) = (relayable, zero_copy) {
            if let Some(answer) = self
                .relayed(&target, &parts.headers, &scope, sender)
                .await?
            {
                return self.answer(endpoint, answer, &remote, local, public).await;
            }
        }
        let answer = self
            .send(&parts.method, &target, &parts.headers, body, &scope)
            .await?;
        self.answer(endpoint, answer, &remote, local, public).await
    }

    /// A blob `GET` of `target` on a connection of its own, its body relayed
    /// to the client's connection (`sender`) by `splice`; `None` when the
    /// upstream is not plain HTTP or answers anything a relay cannot carry,
    /// for the pooled path to ask again.
    async fn relayed(
        &self,
        target: &str,
        headers: &HeaderMap,
        scope: &str,
        sender: zero_copy::Sender,
    ) -> Result<Option<Response<Body>>, ApiError> {
        let Some(authority) = self
            .base
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(rest))
        else {
            return Ok(None);
        };
        let authorization = self.authorization(scope).await?;
        let (request, _) =
            build(&Method::GET, target, headers, authorization, Body::empty())?.into_parts();
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = request.headers;
        // Written by the fetch itself.
        headers.remove(header::HOST);
        headers.remove(header::CONNECTION);
        let turn = self.client.turn().await.map_err(|e| self.failed(&e))?;
        let timeout = self.client.timeout();
        let fetched = match tokio::time::timeout(
            timeout,
            zero_copy::fetch(authority, path, &headers, StatusCode::OK),
        )
        .await
        {
            Err(_) => return Err(self.failed(&SendError::Timeout(timeout))),
            Ok(Err(e)) => {
                // The cause names the upstream's address: for the log only.
                tracing::warn!(upstream = %self.config.name, error = %e, "upstream request failed");
                return Err(self.unavailable("is unreachable"));
            }
            Ok(Ok(fetched)) => fetched,
        };
        let (head, socket, early, len) = match fetched {
            zero_copy::Fetched::Relay(relay) => *relay,
            zero_copy::Fetched::Declined(why) => {
                tracing::debug!(
                    target: zero_copy::LOG_TARGET,
                    upstream = %self.config.name,
                    path = "copy",
                    why,
                    "upstream blob sent"
                );
                return Ok(None);
            }
        };
        tracing::debug!(
            target: zero_copy::LOG_TARGET,
            upstream = %self.config.name,
            path = "splice",
            bytes = len,
            "upstream blob sent"
        );
        // As on the pooled path, an upstream that stops sending for the
        // timeout fails the body rather than hold the client.
        let body = zero_copy::relay(sender, socket, len, &early, Some(timeout)).map_err(|e| {
            tracing::warn!(error = %e, "cannot relay an upstream blob");
            ApiError::new(ErrorCode::Internal)
        })?;
        // The turn is the body's until it ends or is dropped.
        let body = futures_util::StreamExt::map(body, move |frame| {
            let _turn = &turn;
            frame
        });
        let mut answer = Response::new(Body::from_stream(body));
        *answer.status_mut() = head.status;
        *answer.headers_mut() = head.headers;
        Ok(Some(answer))
    }

    /// Sends one request to `target` (an absolute URL of the upstream) with
    /// the client's `headers` and Portcullis' credentials for `scope`;
    /// follows a read's redirect; an upstream that refuses Portcullis'
    /// credentials is an error.
    async fn send(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: Body,
        scope: &str,
    ) -> Result<Response<Body>, ApiError> {
        let bodiless = matches!(*method, Method::GET | Method::HEAD);
        let mut body = Some(body);
        let mut answer = None;
        // A bodiless request is sent once more after a refused token (it
        // may have expired early); one with a body cannot be replayed.
        for attempt in 0..2 {
            let authorization = self.authorization(scope).await?;
            let request_body = match bodiless {
                true => Body::empty(),
                false => body.take().unwrap_or_else(Body::empty),
            };
            let request = build(method, target, headers, authorization, request_body)?;
            let sent = self
                .client
                .send(request)
                .await
                .map_err(|e| self.failed(&e))?;
            tracing::debug!(
                upstream = %self.config.name,
                version = ?sent.version(),
                status = %sent.status(),
                "upstream answered"
            );
            let refused = matches!(sent.status(), StatusCode::UNAUTHORIZED);
            if refused && bodiless && attempt == 0 {
                // Asked again with what this 401 asks for: a token that
                // expired early, or an upstream whose challenge changed.
                self.tokens.forget(scope);
                if let Some(challenge) = challenge_of(sent.headers()) {
                    *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Some(challenge));
                }
                continue;
            }
            answer = Some(sent);
            break;
        }
        let answer = answer.expect("the loop answers or returns");
        match answer.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                tracing::warn!(
                    upstream = %self.config.name,
                    status = %answer.status(),
                    "the upstream refused Portcullis' credentials"
                );
                Err(self.unavailable("refused Portcullis' credentials"))
            }
            s if s.is_redirection() && bodiless => {
                self.follow(method, headers, answer, MAX_REDIRECTS).await
            }
            _ => Ok(answer),
        }
    }

    /// The client's query, with a cross-repository mount's `from` turned
    /// into the upstream's name, or the mount dropped (a plain upload
    /// start, as the spec allows) when `from` is not of this upstream.
    fn query(&self, endpoint: &Endpoint, query: Option<&str>) -> Option<String> {
        let query = query?;
        let Endpoint::StartUpload {
            start: UploadStart::Mount { from, .. },
            ..
        } = endpoint
        else {
            return Some(query.to_owned());
        };
        // A blob of another upstream or of the built-in storage cannot be
        // mounted here.
        let from = self.config.routes(from.as_str()).then(|| self.remote(from));
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match (key.as_ref(), &from) {
                ("from", Some(remote)) => {
                    out.append_pair("from", remote);
                }
                ("from" | "mount", None) => {}
                _ => {
                    out.append_pair(&key, &value);
                }
            }
        }
        let out = out.finish();
        (!out.is_empty()).then_some(out)
    }

    /// The `Authorization` Portcullis sends for `scope`, if any.
    async fn authorization(&self, scope: &str) -> Result<Option<HeaderValue>, ApiError> {
        let known = self
            .challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let challenge = match known {
            Some(challenge) => challenge,
            None => {
                let probed = self.probe().await?;
                *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(probed.clone());
                probed
            }
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.account.as_ref().map(Account::basic)),
            Some(Challenge::Bearer { realm, service }) => {
                if let Some(token) = self.tokens.get(scope) {
                    return Ok(Some(token));
                }
                self.fetch_token(&realm, service.as_deref(), scope)
                    .await
                    .map(Some)
            }
        }
    }

    /// A `GET` Portcullis makes for itself (the probe, a token), once.
    async fn get(
        &self,
        url: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<Response<Body>, ApiError> {
        let request = build(
            &Method::GET,
            url,
            &HeaderMap::new(),
            authorization,
            Body::empty(),
        )?;
        self.client.send(request).await.map_err(|e| self.failed(&e))
    }

    /// `GET /v2/` as a client starts: what the upstream's challenge asks.
    async fn probe(&self) -> Result<Option<Challenge>, ApiError> {
        let answer = self.get(&format!("{}/v2/", self.base), None).await?;
        if answer.status() != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        match challenge_of(answer.headers()) {
            Some(challenge) => Ok(Some(challenge)),
            None => {
                tracing::warn!(upstream = %self.config.name, "the upstream asks for credentials Portcullis cannot give");
                Err(self.unavailable("asks for credentials Portcullis cannot give"))
            }
        }
    }

    /// A token for `scope` from the upstream's token server, with
    /// Portcullis' account (or anonymously), kept for its lifetime.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue, ApiError> {
        // Built before the first await: the serializer is not `Send`.
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
            query.finish()
        };
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{query}");
        let answer = self
            .get(&url, self.account.as_ref().map(Account::basic))
            .await?;
        if !answer.status().is_success() {
            tracing::warn!(
                upstream = %self.config.name,
                status = %answer.status(),
                scope,
                "the upstream's token server refused Portcullis"
            );
            return Err(self.unavailable("refused Portcullis' credentials"));
        }
        let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .map_err(|_| self.unavailable("sent a broken token answer"))?;
        let parsed: auth::TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| self.unavailable("sent a broken token answer"))?;
        self.tokens
            .put(scope, parsed)
            .ok_or_else(|| self.unavailable("sent a token answer without a token"))
    }

    /// Follows a redirect of a read (distribution's to where it keeps the
    /// blob) here, so that the client never learns where it pointed.
    async fn follow(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        mut answer: Response<Body>,
        mut left: usize,
    ) -> Result<Response<Body>, ApiError> {
        while answer.status().is_redirection() && left > 0 {
            left -= 1;
            let Some(location) = answer
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                break;
            };
            let target = match location.starts_with('/') {
                true => format!("{}{location}", self.base),
                false => location.to_owned(),
            };
            if !(target.starts_with("https://") || target.starts_with("http://")) {
                return Err(self.unavailable("redirected to an address Portcullis cannot reach"));
            }
            // Only the headers that shape the read: the upstream's storage
            // gets no credentials at all.
            let mut headers = HeaderMap::new();
            for name in [header::RANGE, header::ACCEPT, header::IF_NONE_MATCH] {
                if let Some(value) = client_headers.get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            let request = build(method, &target, &headers, None, Body::empty())?;
            answer = self
                .client
                .send(request)
                .await
                .map_err(|e| self.failed(&e))?;
        }
        if answer.status().is_redirection() {
            return Err(self.unavailable("redirected too often"));
        }
        Ok(answer)
    }

    /// The upstream's answer as Portcullis': headers filtered and
    /// addresses rewritten, a tag list under the client's name.
    async fn answer(
        &self,
        endpoint: &Endpoint,
        answer: Response<Body>,
        remote: &str,
        local: &RepoName,
        public: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (parts, body) = answer.into_parts();
        let mut headers = HeaderMap::new();
        super::forward::copy_headers(
            &parts.headers,
            &mut headers,
            &[
                header::WWW_AUTHENTICATE,
                header::SET_COOKIE,
                header::SERVER,
                // Framing is the client connection's own.
                header::CONTENT_LENGTH,
            ],
        );
        let from = format!("/v2/{remote}/");
        let to = format!("/v2/{local}/");
        if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let path = location
                .strip_prefix(self.base.as_str())
                .unwrap_or(location);
            let rewritten = match path.strip_prefix(from.as_str()) {
                Some(rest) if path.starts_with('/') => format!("{public}{to}{rest}"),
                // Anything else would tell the client where the upstream
                // is, or send it around Portcullis.
                _ => format!("{public}{to}"),
            };
            match HeaderValue::from_str(&rewritten) {
                Ok(value) => {
                    headers.insert(header::LOCATION, value);
                }
                Err(_) => {
                    headers.remove(header::LOCATION);
                }
            }
        }
        if let Some(link) = headers.get(header::LINK).and_then(|v| v.to_str().ok()) {
            let rewritten = link.replacen(&format!("<{}{from}", self.base), &format!("<{to}"), 1);
            let rewritten = rewritten.replacen(&format!("<{from}"), &format!("<{to}"), 1);
            match HeaderValue::from_str(&rewritten) {
                Ok(value) => {
                    headers.insert(header::LINK, value);
                }
                Err(_) => {
                    headers.remove(header::LINK);
                }
            }
        }
        let body = match endpoint {
            Endpoint::Tags { .. } if parts.status == StatusCode::OK => {
                let bytes = axum::body::to_bytes(body, MAX_LIST)
                    .await
                    .map_err(|_| self.unavailable("sent a broken tag list"))?;
                let mut list: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|_| self.unavailable("sent a broken tag list"))?;
                list["name"] = local.as_str().into();
                Body::from(serde_json::to_vec(&list).unwrap_or_default())
            }
            _ => {
                if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
                    headers.insert(header::CONTENT_LENGTH, length.clone());
                }
                body
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// A request that got no answer, logged with its cause (which names
    /// the upstream's address) and answered without it.
    fn failed(&self, e: &SendError) -> ApiError {
        tracing::warn!(upstream = %self.config.name, error = %e, "upstream request failed");
        match e {
            SendError::Busy(_) => self.unavailable("is busy"),
            SendError::Timeout(_) => self.unavailable("did not answer in time"),
            SendError::Failed(_) => self.unavailable("is unreachable"),
        }
    }
}

/// The first challenge of a 401 that Portcullis can answer.
fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse)
}

/// The actions of the upstream's scope for `endpoint`.
fn actions(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::DeleteManifest { .. } | Endpoint::DeleteBlob { .. } => "delete",
        e if e.writes() => "pull,push",
        _ => "pull",
    }
}

/// A request to `url` with the client's headers but its credentials,
/// cookies, hop-by-hop headers and `Host`, and Portcullis' `authorization`.
fn build(
    method: &Method,
    url: &str,
    client_headers: &HeaderMap,
    authorization: Option<HeaderValue>,
    body: Body,
) -> Result<Request<Body>, ApiError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::Internal))?;
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(body)
        .map_err(|_| ApiError::new(ErrorCode::Internal))?;
    let headers = request.headers_mut();
    super::forward::copy_headers(
        client_headers,
        headers,
        &[header::AUTHORIZATION, header::COOKIE],
    );
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(toml: &str) -> Upstream {
        let config = crate::config::Config::parse(toml).unwrap();
        Upstream::new(config.upstream[0].clone()).unwrap()
    }

    #[test]
    fn names_lose_the_prefix_and_gain_the_default_namespace_as_configured() {
        let hub = upstream(
            "[[upstream]]\nname = \"hub\"\nprefix = \"mirror\"\nurl = \"https://registry-1.docker.io\"\ndefault_namespace = \"library\"\n",
        );
        let name = |n: &str| RepoName::parse(n).unwrap();
        assert_eq!(hub.remote(&name("mirror/alpine")), "library/alpine");
        assert_eq!(hub.remote(&name("mirror/bitnami/redis")), "bitnami/redis");
        let kept = upstream(
            "[[upstream]]\nname = \"v\"\nprefix = \"vendor/x\"\nurl = \"http://10.0.0.9:5000/\"\nstrip_prefix = false\n",
        );
        assert_eq!(kept.remote(&name("vendor/x/app")), "vendor/x/app");
        assert_eq!(kept.base, "http://10.0.0.9:5000");
        // And back, for the catalog: the short name where the namespace was
        // added, nothing for a name no client name leads to.
        assert_eq!(
            hub.local("library/alpine").as_deref(),
            Some("mirror/alpine")
        );
        assert_eq!(
            hub.local("bitnami/redis").as_deref(),
            Some("mirror/bitnami/redis")
        );
        assert_eq!(kept.local("vendor/x/app").as_deref(), Some("vendor/x/app"));
        assert_eq!(kept.local("other/app"), None);
        assert_eq!(kept.local("Not A Name"), None);
    }
}
