//! Every request parsed once into a [`Route`]: which service answers it,
//! which credentials it takes, and the access it needs. [`super::dispatch`]
//! parses, authorizes at one point ([`super::authorize`]) and hands the
//! route to its handler; a new backend (the legacy v1 registry, an upstream
//! v2 registry) is a new variant here with its access, never a second
//! permission check in a handler.

use axum::http::Method;

use super::endpoint::{self, Access, Endpoint};
use super::v1::V1Endpoint;
use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/token`: turns credentials into a token (`GET`, and `POST` for
    /// OAuth2). The credentials are what it checks, so it needs no access.
    Token { post: bool },
    /// `/.well-known/jwks.json`: the public keys tokens are signed with.
    Jwks,
    /// `/healthz`: the process answers.
    Live,
    /// `/readyz`: requests can be served.
    Ready,
    /// `/v2/…` on the built-in storage.
    Registry(Endpoint),
    /// `/v2/…` of a repository under an upstream's prefix: the same
    /// endpoint, answered by that upstream.
    Upstream(Endpoint, std::sync::Arc<crate::api::upstream::Upstream>),
    /// `/v1/…` (and `/_ping`), for the legacy backend.
    V1(V1Endpoint),
    /// `/login…`: the sign-in page, which checks its own session cookie.
    Login(super::login::LoginRoute),
    /// `/metrics`: the Prometheus exposition (its own optional token).
    Metrics,
}

/// What a route takes as credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// None: public, or the route's own business (`/token` checks the
    /// Basic credentials, refresh token or client certificate it is given).
    None,
    /// A bearer token this server issued (`Authorization: Bearer …`).
    Bearer,
    /// A name and password (`Authorization: Basic …`) or none (anonymous),
    /// checked by the identity sources on each request, as old engines
    /// send them.
    Basic,
}

impl Route {
    /// Parses a request. `path` is the raw (still percent-encoded) path.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
        let read = [Method::GET, Method::HEAD];
        match path {
            "/token" if *method == Method::POST => Ok(Route::Token { post: true }),
            "/token" => endpoint::only(method, &read, Route::Token { post: false }),
            "/.well-known/jwks.json" => endpoint::only(method, &read, Route::Jwks),
            "/healthz" => endpoint::only(method, &read, Route::Live),
            "/readyz" => endpoint::only(method, &read, Route::Ready),
            "/metrics" => endpoint::only(method, &read, Route::Metrics),
            _ if path == "/login" || path.starts_with("/login/") => {
                match super::login::LoginRoute::parse(method, path) {
                    Some(parsed) => parsed.map(Route::Login),
                    None => Err(ErrorCode::NotFound.into()),
                }
            }
            _ if path == "/v2" || path.starts_with("/v2/") => {
                Endpoint::parse(method, path, query).map(Route::Registry)
            }
            _ if path == "/_ping" || path.starts_with("/v1/") => {
                V1Endpoint::parse(method, path).map(Route::V1)
            }
            _ => Err(ErrorCode::NotFound.into()),
        }
    }

    pub fn credentials(&self) -> Credentials {
        match self {
            Route::Token { .. } | Route::Jwks | Route::Live | Route::Ready => Credentials::None,
            // The page's session is a cookie it signed itself; the metrics'
            // token is not a registry token.
            Route::Login(_) | Route::Metrics => Credentials::None,
            Route::Registry(_) | Route::Upstream(..) => Credentials::Bearer,
            // The ping and the login answer without; the login checks the
            // credentials it is given itself, as `/token` does.
            Route::V1(V1Endpoint::Ping | V1Endpoint::Login { .. }) => Credentials::None,
            Route::V1(_) => Credentials::Basic,
        }
    }

    /// Everything a caller must be allowed to do this.
    pub fn required_access(&self) -> Vec<Access> {
        match self {
            Route::Registry(endpoint) | Route::Upstream(endpoint, _) => endpoint.required_access(),
            Route::V1(endpoint) => endpoint.required_access(),
            Route::Token { .. } | Route::Jwks | Route::Live | Route::Ready => Vec::new(),
            Route::Login(_) | Route::Metrics => Vec::new(),
        }
    }

    /// Who answers the route, for the request log (`backend=` of the
    /// request span): the built-in storage, the legacy v1 registry, or
    /// Portcullis itself (tokens, keys, the v1 ping and login).
    pub fn backend(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(match self {
            Route::Registry(_) => "storage",
            Route::Upstream(_, upstream) => return upstream.log_name().into(),
            Route::V1(V1Endpoint::Ping | V1Endpoint::Login { .. }) => "self",
            Route::V1(_) => "legacy-v1",
            Route::Token { .. } | Route::Jwks | Route::Live | Route::Ready => "self",
            Route::Login(_) | Route::Metrics => "self",
        })
    }

    /// The route's name in metrics: one per service and resource, never a
    /// repository name (which would make a label per repository).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Token { .. } => "token",
            Route::Jwks => "jwks",
            Route::Live => "healthz",
            Route::Ready => "readyz",
            Route::Login(_) => "login",
            Route::Metrics => "metrics",
            Route::V1(_) => "v1",
            Route::Registry(endpoint) | Route::Upstream(endpoint, _) => endpoint.label(),
        }
    }

    /// Whether the trace and the request log leave it out: probes come
    /// every few seconds.
    pub fn is_probe(&self) -> bool {
        matches!(self, Route::Live | Route::Ready | Route::Metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_is_one_route_with_its_credentials() {
        let parse = |m: Method, p: &str| Route::parse(&m, p, None);
        assert_eq!(
            parse(Method::GET, "/token").unwrap(),
            Route::Token { post: false }
        );
        assert_eq!(
            parse(Method::POST, "/token").unwrap(),
            Route::Token { post: true }
        );
        assert_eq!(parse(Method::HEAD, "/healthz").unwrap(), Route::Live);
        assert_eq!(parse(Method::GET, "/readyz").unwrap(), Route::Ready);
        assert_eq!(
            parse(Method::GET, "/.well-known/jwks.json").unwrap(),
            Route::Jwks
        );
        let base = parse(Method::GET, "/v2/").unwrap();
        assert_eq!(base, Route::Registry(Endpoint::Base));
        assert_eq!(base.credentials(), Credentials::Bearer);
        assert_eq!(base.required_access(), vec![Access::Authenticated]);
        assert_eq!(parse(Method::GET, "/v2").unwrap(), base);
        for public in [
            "/token",
            "/healthz",
            "/readyz",
            "/.well-known/jwks.json",
            "/metrics",
        ] {
            let route = parse(Method::GET, public).unwrap();
            assert_eq!(route.credentials(), Credentials::None, "{public}");
            assert!(route.required_access().is_empty(), "{public}");
        }
        // Every route's metrics label is one the byte counters know.
        for (method, path) in [
            (Method::GET, "/token"),
            (Method::GET, "/metrics"),
            (Method::GET, "/login"),
            (Method::GET, "/v2/_catalog"),
            (Method::GET, "/v2/a/tags/list"),
            (Method::GET, "/v2/a/manifests/latest"),
            (
                Method::HEAD,
                "/v2/a/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            (Method::POST, "/v2/a/blobs/uploads/"),
            (
                Method::GET,
                "/v2/a/referrers/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            (Method::GET, "/v1/_ping"),
        ] {
            let route = parse(method, path).unwrap();
            assert!(crate::metrics::ROUTES.contains(&route.label()), "{path}");
        }
        // Near misses are not routes.
        for path in ["/", "/token/", "/v2x", "/v1", "/healthz/", "/V2/"] {
            let refused = parse(Method::GET, path).unwrap_err();
            assert_eq!(refused.code, ErrorCode::NotFound, "{path}");
        }
        let refused = parse(Method::DELETE, "/token").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unsupported);
        assert!(parse(Method::PUT, "/healthz").is_err());
    }
}
