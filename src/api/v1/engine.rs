//! Which Docker engine sent a request, from its `User-Agent`
//! (`docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/… os/linux
//! arch/amd64`), for `v1.v1_only_engines_below`.

use axum::http::{HeaderMap, header};

/// A dotted version, compared component by component (`1.10` > `1.9`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(Vec<u32>);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        // `1.9.1-cs2`, `17.03.0-ce`: the numeric part is the version.
        let numeric = s.split(['-', '+', '~']).next()?;
        let parts: Option<Vec<u32>> = numeric.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Self)
    }
}

/// The engine version of a `User-Agent` that names one (`docker/<v>` as
/// its first product); `None` for other clients.
pub fn docker_version(headers: &HeaderMap) -> Option<Version> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let first = agent.split_whitespace().next()?;
    Version::parse(first.strip_prefix("docker/")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, value.parse().unwrap());
        headers
    }

    #[test]
    fn engine_versions_come_from_the_first_product_and_compare_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.9.1") < v("1.10"));
        assert!(v("1.10.0") >= v("1.10"));
        assert!(v("17.03.0-ce") > v("1.10"));
        assert_eq!(Version::parse("x.y"), None);
        assert_eq!(Version::parse(""), None);
        let old = "docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/4.19.0 os/linux arch/amd64";
        assert_eq!(docker_version(&agent(old)), Some(v("1.5.0")));
        assert_eq!(docker_version(&agent("skopeo/1.9.3")), None);
        assert_eq!(docker_version(&agent("curl/7.88 docker/1.5.0")), None);
        assert_eq!(docker_version(&HeaderMap::new()), None);
    }
}
