//! Every `/v2/` request parsed once into an [`Endpoint`], with the access it
//! needs. The router authorizes from [`Endpoint::required_access`] before any
//! handler runs; handlers never check permissions themselves.
//!
//! Paths are parsed from the right: a repository name may have any number of
//! components, including ones spelled like route words (`a/blobs/b` is a
//! valid name), so the route is decided by the last segments and everything
//! before them is the name.

use axum::http::Method;

use crate::error::{ApiError, ErrorCode};
use crate::reference::{Digest, Reference, ReferenceError, RepoName};
use crate::storage::UploadId;

/// Pagination of tag and catalog lists (`n`, `last`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

/// How a `POST …/blobs/uploads/` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStart {
    /// A new session for chunked or streamed uploads.
    Session,
    /// The whole blob in this request (`?digest=`).
    Monolithic(Digest),
    /// Link a blob of another repository (`?mount=&from=`); a new session
    /// when it is not there.
    Mount { digest: Digest, from: RepoName },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog(Page),
    Tags {
        name: RepoName,
        page: Page,
    },
    GetManifest {
        name: RepoName,
        reference: Reference,
        head: bool,
    },
    PutManifest {
        name: RepoName,
        reference: Reference,
    },
    DeleteManifest {
        name: RepoName,
        reference: Reference,
    },
    GetBlob {
        name: RepoName,
        digest: Digest,
        head: bool,
    },
    DeleteBlob {
        name: RepoName,
        digest: Digest,
    },
    StartUpload {
        name: RepoName,
        start: UploadStart,
    },
    UploadStatus {
        name: RepoName,
        id: UploadId,
    },
    PatchUpload {
        name: RepoName,
        id: UploadId,
    },
    FinishUpload {
        name: RepoName,
        id: UploadId,
        digest: Digest,
    },
    CancelUpload {
        name: RepoName,
        id: UploadId,
    },
    Referrers {
        name: RepoName,
        subject: Digest,
        artifact_type: Option<String>,
    },
}

impl Endpoint {
    /// The resource, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "v2_base",
            Endpoint::Catalog(_) => "v2_catalog",
            Endpoint::Tags { .. } => "v2_tags",
            Endpoint::GetManifest { .. }
            | Endpoint::PutManifest { .. }
            | Endpoint::DeleteManifest { .. } => "v2_manifest",
            Endpoint::GetBlob { .. } | Endpoint::DeleteBlob { .. } => "v2_blob",
            Endpoint::StartUpload { .. }
            | Endpoint::UploadStatus { .. }
            | Endpoint::PatchUpload { .. }
            | Endpoint::FinishUpload { .. }
            | Endpoint::CancelUpload { .. } => "v2_upload",
            Endpoint::Referrers { .. } => "v2_referrers",
        }
    }
}

pub use crate::auth::scope::Action;

/// One thing a request needs to be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Any authenticated caller (the `/v2/` version check).
    Authenticated,
    /// Listing every repository (`registry:catalog:*`).
    Catalog,
    Repository {
        name: RepoName,
        actions: Vec<Action>,
    },
}

impl Endpoint {
    /// Parses a request under `/v2`. `path` is the raw (still percent-encoded)
    /// path: a `%` can never be part of a valid name, so nothing is decoded.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Endpoint, ApiError> {
        let rest = path.strip_prefix("/v2").ok_or(ErrorCode::NotFound)?;
        if rest.is_empty() || rest == "/" {
            return only(method, &[Method::GET, Method::HEAD], Endpoint::Base);
        }
        let rest = rest.strip_prefix('/').ok_or(ErrorCode::NotFound)?;
        let query = Query::parse(query);
        if rest == "_catalog" {
            return only(method, &[Method::GET], ())
                .and_then(|_| Ok(Endpoint::Catalog(query.page()?)));
        }
        let route = Route::split(rest).ok_or(ErrorCode::NotFound)?;
        let name = RepoName::parse(route.name)?;
        let is = |m: Method| *method == m;
        match route.kind {
            RouteKind::Tags => {
                only(method, &[Method::GET], ())?;
                Ok(Endpoint::Tags {
                    name,
                    page: query.page()?,
                })
            }
            RouteKind::Manifest(reference) => {
                // A reference that is neither a tag nor a digest cannot name
                // a manifest: reading or deleting it finds nothing (as
                // distribution answers, and the conformance suite expects);
                // only storing under it is a client's mistake.
                let reference = match Reference::parse(reference) {
                    Ok(reference) => reference,
                    Err(_) if reads_or_deletes(method) => {
                        return Err(ErrorCode::ManifestUnknown.into());
                    }
                    Err(e) => return Err(e.into()),
                };
                match method {
                    m if *m == Method::GET || *m == Method::HEAD => Ok(Endpoint::GetManifest {
                        name,
                        reference,
                        head: is(Method::HEAD),
                    }),
                    m if *m == Method::PUT => Ok(Endpoint::PutManifest { name, reference }),
                    m if *m == Method::DELETE => Ok(Endpoint::DeleteManifest { name, reference }),
                    _ => Err(ErrorCode::Unsupported.into()),
                }
            }
            RouteKind::Blob(digest) => {
                // A well-formed digest of an algorithm we do not hash names
                // no blob here: not found. A malformed one stays invalid.
                let digest = match Digest::parse(digest) {
                    Err(ReferenceError::Algorithm) if reads_or_deletes(method) => {
                        return Err(ErrorCode::BlobUnknown.into());
                    }
                    parsed => parsed?,
                };
                match method {
                    m if *m == Method::GET || *m == Method::HEAD => Ok(Endpoint::GetBlob {
                        name,
                        digest,
                        head: is(Method::HEAD),
                    }),
                    m if *m == Method::DELETE => Ok(Endpoint::DeleteBlob { name, digest }),
                    _ => Err(ErrorCode::Unsupported.into()),
                }
            }
            RouteKind::Uploads => {
                only(method, &[Method::POST], ())?;
                let start = match (query.get("mount"), query.get("from"), query.get("digest")) {
                    (Some(mount), Some(from), _) => UploadStart::Mount {
                        digest: Digest::parse(mount)?,
                        from: RepoName::parse(from)?,
                    },
                    // A mount without `from` cannot be honoured: a repository
                    // sees only its own blobs. The spec's answer is a session.
                    (Some(_), None, _) => UploadStart::Session,
                    (None, _, Some(digest)) => UploadStart::Monolithic(Digest::parse(digest)?),
                    (None, _, None) => UploadStart::Session,
                };
                Ok(Endpoint::StartUpload { name, start })
            }
            RouteKind::Upload(id) => {
                let id = UploadId::parse(id).ok_or(ErrorCode::BlobUploadUnknown)?;
                match method {
                    m if *m == Method::GET => Ok(Endpoint::UploadStatus { name, id }),
                    m if *m == Method::PATCH => Ok(Endpoint::PatchUpload { name, id }),
                    m if *m == Method::PUT => {
                        let digest = query.get("digest").ok_or_else(|| {
                            ApiError::new(ErrorCode::DigestInvalid)
                                .message("the digest parameter is required")
                        })?;
                        Ok(Endpoint::FinishUpload {
                            name,
                            id,
                            digest: Digest::parse(digest)?,
                        })
                    }
                    m if *m == Method::DELETE => Ok(Endpoint::CancelUpload { name, id }),
                    _ => Err(ErrorCode::Unsupported.into()),
                }
            }
            RouteKind::Referrers(digest) => {
                only(method, &[Method::GET], ())?;
                Ok(Endpoint::Referrers {
                    name,
                    subject: Digest::parse(digest)?,
                    artifact_type: query.get("artifactType").map(str::to_owned),
                })
            }
        }
    }

    /// What the caller must be allowed, decided here once for every endpoint:
    /// reads need pull, writes push and pull, deletes delete; a mount also
    /// needs pull on the source repository.
    pub fn required_access(&self) -> Vec<Access> {
        use Action::*;
        let repo = |name: &RepoName, actions: &[Action]| Access::Repository {
            name: name.clone(),
            actions: actions.to_vec(),
        };
        match self {
            Endpoint::Base => vec![Access::Authenticated],
            Endpoint::Catalog(_) => vec![Access::Catalog],
            Endpoint::Tags { name, .. }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::Referrers { name, .. } => vec![repo(name, &[Pull])],
            Endpoint::PutManifest { name, .. }
            | Endpoint::UploadStatus { name, .. }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::FinishUpload { name, .. }
            | Endpoint::CancelUpload { name, .. } => vec![repo(name, &[Pull, Push])],
            Endpoint::StartUpload { name, start } => match start {
                UploadStart::Mount { from, .. } => {
                    vec![repo(name, &[Pull, Push]), repo(from, &[Pull])]
                }
                _ => vec![repo(name, &[Pull, Push])],
            },
            Endpoint::DeleteManifest { name, .. } | Endpoint::DeleteBlob { name, .. } => {
                vec![repo(name, &[Delete])]
            }
        }
    }
}

impl Endpoint {
    /// The repository the request is about; `None` for the version check
    /// and the catalog.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog(_) => None,
            Endpoint::Tags { name, .. }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::PutManifest { name, .. }
            | Endpoint::DeleteManifest { name, .. }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::DeleteBlob { name, .. }
            | Endpoint::StartUpload { name, .. }
            | Endpoint::UploadStatus { name, .. }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::FinishUpload { name, .. }
            | Endpoint::CancelUpload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }

    /// Whether the request changes the repository (a push or a delete).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Endpoint::Base
                | Endpoint::Catalog(_)
                | Endpoint::Tags { .. }
                | Endpoint::GetManifest { .. }
                | Endpoint::GetBlob { .. }
                | Endpoint::Referrers { .. }
        )
    }
}

/// `GET`, `HEAD` or `DELETE`: the methods for which a reference that
/// cannot exist is simply not found.
fn reads_or_deletes(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::DELETE].contains(method)
}

/// `value` when `method` is one of `allowed`, else `UNSUPPORTED` (405).
pub(super) fn only<T>(method: &Method, allowed: &[Method], value: T) -> Result<T, ApiError> {
    if allowed.contains(method) {
        Ok(value)
    } else {
        Err(ErrorCode::Unsupported.into())
    }
}

enum RouteKind<'a> {
    Tags,
    Manifest(&'a str),
    Blob(&'a str),
    Uploads,
    Upload(&'a str),
    Referrers(&'a str),
}

struct Route<'a> {
    name: &'a str,
    kind: RouteKind<'a>,
}

impl<'a> Route<'a> {
    /// Splits `<name>/<route>` by its trailing segments.
    fn split(rest: &'a str) -> Option<Route<'a>> {
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Route {
                name,
                kind: RouteKind::Tags,
            });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Some(Route {
                name,
                kind: RouteKind::Uploads,
            });
        }
        let (head, last) = rest.rsplit_once('/')?;
        let (before, word) = head.rsplit_once('/')?;
        let kind = match word {
            "manifests" => RouteKind::Manifest(last),
            "blobs" => RouteKind::Blob(last),
            "referrers" => RouteKind::Referrers(last),
            "uploads" => {
                let name = before.strip_suffix("/blobs")?;
                return Some(Route {
                    name,
                    kind: RouteKind::Upload(last),
                });
            }
            _ => return None,
        };
        Some(Route { name: before, kind })
    }
}

/// Decoded query parameters (first occurrence wins).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn page(&self) -> Result<Page, ApiError> {
        let n = match self.get("n") {
            None => None,
            Some(n) => Some(
                n.parse::<usize>()
                    .map_err(|_| ErrorCode::PaginationInvalid)?,
            ),
        };
        Ok(Page {
            n,
            last: self.get("last").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;

    fn parse(method: Method, path: &str) -> Result<Endpoint, ErrorCode> {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        Endpoint::parse(&method, path, query).map_err(|e| e.code)
    }

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn routes_by_trailing_segments() {
        let d = Algorithm::Sha256.digest_of(b"x");
        assert_eq!(parse(Method::GET, "/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse(Method::GET, "/v2"), Ok(Endpoint::Base));
        assert!(matches!(
            parse(Method::GET, "/v2/a/blobs/b/manifests/latest"),
            Ok(Endpoint::GetManifest { name: n, .. }) if n == name("a/blobs/b")
        ));
        assert!(matches!(
            parse(Method::GET, "/v2/a/b/c/d/e/f/g/h/tags/list?n=2&last=x"),
            Ok(Endpoint::Tags { name: n, page }) if n == name("a/b/c/d/e/f/g/h")
                && page == Page { n: Some(2), last: Some("x".into()) }
        ));
        assert!(matches!(
            parse(Method::HEAD, &format!("/v2/x/blobs/{d}")),
            Ok(Endpoint::GetBlob { head: true, .. })
        ));
        assert!(matches!(
            parse(Method::POST, "/v2/x/blobs/uploads/"),
            Ok(Endpoint::StartUpload {
                start: UploadStart::Session,
                ..
            })
        ));
        assert!(matches!(
            parse(Method::POST, &format!("/v2/x/blobs/uploads/?mount={d}&from=y/z")),
            Ok(Endpoint::StartUpload { start: UploadStart::Mount { from, .. }, .. }) if from == name("y/z")
        ));
        let id = UploadId::new();
        assert!(matches!(
            parse(Method::PUT, &format!("/v2/x/blobs/uploads/{id}?digest={d}")),
            Ok(Endpoint::FinishUpload { .. })
        ));
        assert!(matches!(
            parse(Method::GET, &format!("/v2/x/referrers/{d}?artifactType=a%2Fb")),
            Ok(Endpoint::Referrers { artifact_type: Some(t), .. }) if t == "a/b"
        ));
    }

    #[test]
    fn rejects_bad_input_with_the_right_code() {
        let id = UploadId::new();
        assert_eq!(
            parse(Method::GET, "/v2/A/tags/list"),
            Err(ErrorCode::NameInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/../b/tags/list"),
            Err(ErrorCode::NameInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/%2e%2e/tags/list"),
            Err(ErrorCode::NameInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a//b/tags/list"),
            Err(ErrorCode::NameInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2//tags/list"),
            Err(ErrorCode::NameInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/blobs/sha256:zz"),
            Err(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            parse(Method::PUT, "/v2/a/manifests/-bad"),
            Err(ErrorCode::TagInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/manifests/-bad"),
            Err(ErrorCode::ManifestUnknown)
        );
        assert_eq!(
            parse(Method::DELETE, "/v2/a/blobs/md5:00"),
            Err(ErrorCode::BlobUnknown)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/blobs/uploads/nope"),
            Err(ErrorCode::BlobUploadUnknown)
        );
        assert_eq!(
            parse(Method::PUT, &format!("/v2/a/blobs/uploads/{id}")),
            Err(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/tags/list?n=-1"),
            Err(ErrorCode::PaginationInvalid)
        );
        assert_eq!(
            parse(Method::POST, "/v2/a/tags/list"),
            Err(ErrorCode::Unsupported)
        );
        assert_eq!(
            parse(Method::PATCH, "/v2/a/manifests/x"),
            Err(ErrorCode::Unsupported)
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/whatever"),
            Err(ErrorCode::NotFound)
        );
    }

    #[test]
    fn access() {
        let d = Algorithm::Sha256.digest_of(b"x");
        let e = parse(
            Method::POST,
            &format!("/v2/x/blobs/uploads/?mount={d}&from=y"),
        )
        .unwrap();
        assert_eq!(
            e.required_access(),
            vec![
                Access::Repository {
                    name: name("x"),
                    actions: vec![Action::Pull, Action::Push]
                },
                Access::Repository {
                    name: name("y"),
                    actions: vec![Action::Pull]
                },
            ]
        );
        let e = parse(Method::DELETE, &format!("/v2/x/manifests/{d}")).unwrap();
        assert_eq!(
            e.required_access(),
            vec![Access::Repository {
                name: name("x"),
                actions: vec![Action::Delete]
            }]
        );
        assert_eq!(
            parse(Method::GET, "/v2/_catalog")
                .unwrap()
                .required_access(),
            vec![Access::Catalog]
        );
    }
}
