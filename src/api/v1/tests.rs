use super::*;
use crate::reference::ImageId;

fn parse(method: Method, path: &str) -> Result<V1Endpoint, ApiError> {
    V1Endpoint::parse(&method, path)
}

fn repo(name: &str, call: RepositoryCall) -> V1Endpoint {
    V1Endpoint::Repository {
        name: RepoName::parse(name).unwrap(),
        call,
    }
}

const ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[test]
fn the_calls_of_an_old_engine_push_and_pull_are_parsed() {
    let tag = || Tag::parse("latest").unwrap();
    for (method, path, expected) in [
        (Method::GET, "/v1/_ping", V1Endpoint::Ping),
        (Method::GET, "/_ping", V1Endpoint::Ping),
        (Method::POST, "/v1/users/", V1Endpoint::Login { post: true }),
        (Method::GET, "/v1/users/", V1Endpoint::Login { post: false }),
        (Method::GET, "/v1/search", V1Endpoint::Search),
        (
            Method::PUT,
            "/v1/repositories/alice/app/",
            repo("alice/app", RepositoryCall::Put),
        ),
        (
            Method::PUT,
            "/v1/repositories/alice/app/images",
            repo("alice/app", RepositoryCall::PutImages),
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app/images",
            repo("alice/app", RepositoryCall::GetImages),
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app/tags",
            repo("alice/app", RepositoryCall::Tags),
        ),
        (
            Method::PUT,
            "/v1/repositories/alice/app/tags/latest",
            repo("alice/app", RepositoryCall::PutTag(tag())),
        ),
        (
            Method::DELETE,
            "/v1/repositories/alice/app/tags/latest",
            repo("alice/app", RepositoryCall::DeleteTag(tag())),
        ),
        (
            Method::DELETE,
            "/v1/repositories/alice/app/",
            repo("alice/app", RepositoryCall::Delete),
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app/tags/latest/json",
            repo("alice/app", RepositoryCall::TagJson(tag())),
        ),
        // One segment is an official image.
        (
            Method::GET,
            "/v1/repositories/busybox/tags",
            repo("library/busybox", RepositoryCall::Tags),
        ),
        // A repository named like a call word is still addressed by its
        // trailing slash.
        (
            Method::PUT,
            "/v1/repositories/alice/images/",
            repo("alice/images", RepositoryCall::Put),
        ),
    ] {
        assert_eq!(parse(method, path).unwrap(), expected, "{path}");
    }
    let image = |part, write| V1Endpoint::Image {
        id: ImageId::parse(ID).unwrap(),
        part,
        write,
    };
    for (method, part, expected) in [
        (Method::PUT, "json", image(ImagePart::Json, true)),
        (Method::PUT, "layer", image(ImagePart::Layer, true)),
        (Method::PUT, "checksum", image(ImagePart::Checksum, true)),
        (Method::GET, "ancestry", image(ImagePart::Ancestry, false)),
        (Method::GET, "layer", image(ImagePart::Layer, false)),
        (Method::HEAD, "json", image(ImagePart::Json, false)),
    ] {
        let path = format!("/v1/images/{ID}/{part}");
        assert_eq!(parse(method, &path).unwrap(), expected, "{path}");
    }
}

#[test]
fn what_each_call_needs_is_the_repository_in_its_path() {
    let needs = |method, path: &str| parse(method, path).unwrap().required_access();
    let access = |name: &str, action| {
        vec![Access::Repository {
            name: RepoName::parse(name).unwrap(),
            actions: vec![action],
        }]
    };
    assert_eq!(
        needs(Method::GET, "/v1/repositories/alice/app/images"),
        access("alice/app", Action::Pull)
    );
    assert_eq!(
        needs(Method::GET, "/v1/repositories/app/tags/v1"),
        access("library/app", Action::Pull)
    );
    assert_eq!(
        needs(Method::PUT, "/v1/repositories/alice/app/"),
        access("alice/app", Action::Push)
    );
    assert_eq!(
        needs(Method::PUT, "/v1/repositories/alice/app/tags/v1"),
        access("alice/app", Action::Push)
    );
    assert_eq!(
        needs(Method::DELETE, "/v1/repositories/alice/app/tags/v1"),
        access("alice/app", Action::Delete)
    );
    assert!(needs(Method::GET, "/v1/_ping").is_empty());
}

#[test]
fn paths_that_name_no_repository_or_image_are_refused() {
    for (method, path, code) in [
        (Method::GET, "/v1/", ErrorCode::NotFound),
        (Method::GET, "/v1/images/xyz/json", ErrorCode::NotFound),
        (
            Method::GET,
            &format!("/v1/images/{}/json", &ID[..63]),
            ErrorCode::NotFound,
        ),
        (
            Method::GET,
            &format!("/v1/images/{}/json", ID.to_uppercase()),
            ErrorCode::NotFound,
        ),
        (
            Method::GET,
            &format!("/v1/images/{ID}/secret"),
            ErrorCode::NotFound,
        ),
        (
            Method::PUT,
            &format!("/v1/images/{ID}/ancestry"),
            ErrorCode::Unsupported,
        ),
        (
            Method::DELETE,
            &format!("/v1/images/{ID}/layer"),
            ErrorCode::Unsupported,
        ),
        (
            Method::GET,
            "/v1/repositories/a/b/c/tags",
            ErrorCode::NameInvalid,
        ),
        (
            Method::GET,
            "/v1/repositories/../etc/tags",
            ErrorCode::NameInvalid,
        ),
        (
            Method::GET,
            "/v1/repositories/Alice/app/tags",
            ErrorCode::NameInvalid,
        ),
        (
            Method::GET,
            "/v1/repositories/%2e%2e/app/tags",
            ErrorCode::NameInvalid,
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app/tags/bad%20tag",
            ErrorCode::TagInvalid,
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app/",
            ErrorCode::Unsupported,
        ),
        (
            Method::GET,
            "/v1/repositories/alice/app",
            ErrorCode::NotFound,
        ),
        (
            Method::POST,
            "/v1/repositories/alice/app/tags",
            ErrorCode::Unsupported,
        ),
        (Method::GET, "/v1/users/alice", ErrorCode::NotFound),
    ] {
        let refused = parse(method, path).unwrap_err();
        assert_eq!(refused.code, code, "{path}");
    }
}
