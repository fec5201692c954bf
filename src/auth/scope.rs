//! The token scope grammar (`repository:samalba/my-app:pull,push`) and the
//! `access` entries of a token.
//!
//! ```text
//! scope         := resourcescope [ ' ' resourcescope ]*
//! resourcescope := resourcetype ":" resourcename ":" action [ ',' action ]*
//! resourcetype  := /[a-z0-9]+/ [ '(' /[a-z0-9]+/ ')' ]      (the class is ignored)
//! resourcename  := [ hostname '/' ] component [ '/' component ]*
//! hostname      := hostcomponent [ '.' hostcomponent ]* [ ':' port ]
//! ```
//!
//! A name may hold one `:` (a registry port), so a scope is split at its
//! first `:` (type) and its last `:` (actions), never naively in three.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What may be done to a repository. `*` in a scope asks for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("malformed scope `{0}`")]
    Malformed(String),
    #[error("invalid resource name in scope `{0}`")]
    Name(String),
}

/// One requested (or granted) resource scope, e.g. `repository:a/b:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// `repository`, `registry`, … without the deprecated `(class)`.
    pub kind: String,
    pub name: String,
    /// Actions as asked for; unknown ones are kept so that they can be
    /// refused explicitly, and `*` stays `*` (it is expanded when granting).
    pub actions: Vec<String>,
}

impl ResourceScope {
    /// Parses one resource scope.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let malformed = || ScopeError::Malformed(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let kind = resource_type(kind).ok_or_else(malformed)?;
        if !valid_name(name) {
            return Err(ScopeError::Name(s.to_owned()));
        }
        let actions: Vec<String> = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if actions
            .iter()
            .any(|a| a != "*" && !a.bytes().all(|b| b.is_ascii_lowercase()))
        {
            return Err(malformed());
        }
        Ok(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// Parses a space-separated list (the OAuth2 form), skipping empty parts.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, ScopeError> {
        s.split(' ')
            .filter(|part| !part.is_empty())
            .map(Self::parse)
            .collect()
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The resource type without its class: `repository(plugin)` → `repository`.
fn resource_type(s: &str) -> Option<&str> {
    let value = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let (kind, class) = match s.split_once('(') {
        Some((kind, rest)) => (kind, Some(rest.strip_suffix(')')?)),
        None => (s, None),
    };
    (value(kind) && class.is_none_or(value)).then_some(kind)
}

/// `[hostname '/'] component ['/' component]*`. Names are checked against
/// the scope grammar only; whether the registry has such a repository (and
/// whether the name is valid there) is for the policy and the registry.
fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut parts = name.split('/').peekable();
    let first = parts.peek().copied().unwrap_or_default();
    // A first component with a `.` or `:` (or `localhost`) followed by more
    // components is a registry host, as in docker's reference grammar.
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        if !valid_host(first) {
            return false;
        }
        parts.next();
    }
    parts.all(valid_component) && !name.ends_with('/')
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.split('.').all(label)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+ ( ( [_.] | __ | -+ ) [a-z0-9]+ )*`
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> ResourceScope {
        ResourceScope::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_repository_scope() {
        let s = scope("repository:samalba/my-app:pull,push");
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "samalba/my-app");
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(s.to_string(), "repository:samalba/my-app:pull,push");
    }

    #[test]
    fn names_with_a_registry_host_and_port() {
        let s = scope("repository:localhost:5000/a/b:pull");
        assert_eq!(s.name, "localhost:5000/a/b");
        assert_eq!(s.actions, ["pull"]);
        let s = scope("repository:registry.example.com:443/team/app:push,pull");
        assert_eq!(s.name, "registry.example.com:443/team/app");
        assert_eq!(scope("repository:example.com/x:pull").name, "example.com/x");
    }

    #[test]
    fn resource_class_is_accepted_and_ignored() {
        let s = scope("repository(plugin):vieux/sshfs:pull");
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "vieux/sshfs");
    }

    #[test]
    fn catalog_and_wildcard_actions() {
        let s = scope("registry:catalog:*");
        assert_eq!((s.kind.as_str(), s.name.as_str()), ("registry", "catalog"));
        assert_eq!(s.actions, ["*"]);
        assert_eq!(scope("repository:a:*").actions, ["*"]);
        assert_eq!(scope("repository:a:delete").actions, ["delete"]);
        assert!(scope("repository:a:").actions.is_empty());
    }

    #[test]
    fn several_scopes_space_separated() {
        let list = ResourceScope::parse_list("repository:a:pull  repository:b/c:push").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].name, "b/c");
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in [
            "",
            "repository",
            "repository:a",
            "Repository:a:pull",
            "repository(:a:pull",
            "repository():a:pull",
            "repository:A/b:pull",
            "repository:a//b:pull",
            "repository:../a:pull",
            "repository:a/:pull",
            "repository:a:PULL",
            "repository:-a:pull",
            "repository:host:99999999/a:pull",
        ] {
            assert!(ResourceScope::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn component_separators() {
        for good in ["a.b", "a_b", "a__b", "a---b", "a1"] {
            assert!(valid_component(good), "{good}");
        }
        for bad in ["a..b", "a___b", "_a", "a-", "a._b", ""] {
            assert!(!valid_component(bad), "{bad}");
        }
    }
}
