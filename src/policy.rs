//! Access policy: who may pull, push or delete which repositories.
//!
//! Rules come from `policies/*.toml`, read in file-name order (or, when the
//! directory does not exist, from the same files built into the binary: see
//! `embedded`), and are tried in that order: the **first** rule that matches the caller and the
//! repository decides what is granted (possibly nothing), and when no rule
//! matches, nothing is granted. A rule file looks like:
//!
//! ```toml
//! [[rule]]
//! description = "everyone pushes to their own namespace"
//! users = ["*"]                       # any authenticated user
//! repositories = ["${user}/**"]
//! actions = ["pull", "push"]
//! ```
//!
//! Who: `users` (names, or `*` for any authenticated user), `groups`,
//! `anonymous = true`, `sources` (the identity sources that must have
//! vouched: `file`, a directory's or an OpenID issuer's name; alone, any
//! user of those sources), and `claims` (`{ ref = "refs/heads/main" }`:
//! each named claim of the caller's token must match its pattern, `*`
//! standing for any characters; only with `sources`, since a claim means
//! what its issuer says it means). Where from: `from` (addresses or CIDR
//! blocks). What:
//! `repositories` globs, where `*` stays inside one path segment and `**`
//! spans any number of them, and `${user}` / `${group}` stand for the
//! caller's name and each of their groups; `catalog = true` lets the rule
//! answer for the registry catalog. `actions`: `pull`, `push`, `delete`,
//! `*`, or `[]` to deny explicitly.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::auth::scope::Action;
use crate::config::Problem;

pub mod cases;
mod embedded;
mod parse;
mod show;

pub use embedded::PolicySource;

/// Who is asking, as far as the policy is concerned.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `None` for an anonymous caller.
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// The client's address, for `from` conditions; `None` when unknown
    /// (such a caller matches no rule that has a `from`).
    pub addr: Option<IpAddr>,
    /// The identity source that vouched for `user`.
    pub source: Option<&'static str>,
    /// Claims of the token that was the credential (OIDC logins).
    pub claims: BTreeMap<String, String>,
    /// The scopes of the personal access token that was the credential:
    /// what the rules grant is narrowed to them, never widened, and such a
    /// caller never lists the catalog. `None`: not narrowed.
    pub narrowed: Option<std::sync::Arc<[crate::auth::access_tokens::TokenScope]>>,
}

/// Where a rule was written, for `policy explain` and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOrigin {
    pub file: PathBuf,
    pub line: usize,
    /// Position of the rule among all rules, from 1.
    pub index: usize,
    pub description: Option<String>,
}

impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} (rule #{})",
            self.file.display(),
            self.line,
            self.index
        )?;
        if let Some(d) = &self.description {
            write!(f, " \"{d}\"")?;
        }
        Ok(())
    }
}

/// A rule that admits a caller, as [`Policy::applicable`] lists it.
#[derive(Debug, Clone)]
pub struct Applicable {
    pub repositories: Vec<String>,
    pub actions: Vec<Action>,
    pub catalog: bool,
    pub origin: RuleOrigin,
}

/// What the policy decided for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Granted actions: the intersection of those asked for and those the
    /// deciding rule allows.
    pub granted: Vec<Action>,
    /// The rule that decided; `None` when none matched (default deny).
    pub rule: Option<RuleOrigin>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// Every problem of every file read, one per line.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<FileProblem> },
}

/// One problem of a policy file, at the offending key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file: PathBuf,
    pub problem: Problem,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem.in_file(&self.file))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    origin: RuleOrigin,
    users: Vec<String>,
    groups: Vec<String>,
    anonymous: bool,
    from: Vec<IpNet>,
    sources: Vec<String>,
    /// (claim, pattern): all must match.
    claims: Vec<(String, String)>,
    repositories: Vec<Glob>,
    catalog: bool,
    actions: Vec<Action>,
}

impl Policy {
    /// Loads every `*.toml` in `dir`, in file-name order, reporting the
    /// problems of every file, not only the first. A missing directory is an
    /// empty policy (which denies everything); [`Policy::load_configured`]
    /// is what the server uses.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read_err = |source| PolicyError::Read {
            file: dir.to_owned(),
            source,
        };
        let mut files = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(read_err(e)),
        };
        files.retain(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file());
        files.sort();
        let mut texts = Vec::with_capacity(files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Read {
                file: file.clone(),
                source,
            })?;
            texts.push((file, text));
        }
        Self::from_files(texts.iter().map(|(f, t)| (f.as_path(), t.as_str())))
    }

    /// Reads files in the order given, collecting the problems of all.
    fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Self, PolicyError> {
        let mut policy = Policy::default();
        let mut problems = Vec::new();
        for (file, text) in files {
            if let Err(PolicyError::Invalid { problems: found }) = policy.add_file(file, text) {
                problems.extend(found);
            }
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError::Invalid { problems })
        }
    }

    /// Appends the rules of one file (after those already loaded), or
    /// returns every problem in it.
    pub fn add_file(&mut self, file: &Path, text: &str) -> Result<(), PolicyError> {
        match parse::rules(file, text, self.rules.len() + 1) {
            Ok(rules) => {
                self.rules.extend(rules);
                Ok(())
            }
            Err(problems) => Err(PolicyError::Invalid {
                problems: problems
                    .into_iter()
                    .map(|problem| FileProblem {
                        file: file.to_owned(),
                        problem,
                    })
                    .collect(),
            }),
        }
    }

    /// Decides which of `wanted` the caller may do on repository `name`.
    pub fn decide(&self, caller: &Caller, name: &str, wanted: &[Action]) -> Decision {
        for rule in &self.rules {
            if rule.admits(caller) && rule.repositories.iter().any(|g| g.matches(name, caller)) {
                let mut granted = intersect(wanted, &rule.actions);
                if let Some(scopes) = &caller.narrowed {
                    granted.retain(|a| scopes.iter().any(|s| s.allows(name, *a)));
                }
                return Decision {
                    granted,
                    rule: Some(rule.origin.clone()),
                };
            }
        }
        Decision {
            granted: Vec::new(),
            rule: None,
        }
    }

    /// The rules that admit `caller`, in the order they are tried, for a
    /// person to read what they may do (the sign-in page): repository
    /// patterns with `${user}` filled in, the actions, and whether the rule
    /// lists the catalog. Per repository the first matching rule decides,
    /// so an earlier rule may leave a later one nothing.
    pub fn applicable(&self, caller: &Caller) -> Vec<Applicable> {
        self.rules
            .iter()
            .filter(|rule| rule.admits(caller))
            .map(|rule| Applicable {
                repositories: rule
                    .repositories
                    .iter()
                    .map(|g| {
                        let pattern = g.segments.join("/");
                        match &caller.user {
                            Some(user) => pattern.replace("${user}", user),
                            None => pattern,
                        }
                    })
                    .collect(),
                actions: rule.actions.clone(),
                catalog: rule.catalog,
                origin: rule.origin.clone(),
            })
            .collect()
    }

    /// Whether the caller may list the catalog: the first matching rule with
    /// `catalog = true` decides (it allows when it grants any action).
    pub fn decide_catalog(&self, caller: &Caller) -> Decision {
        for rule in &self.rules {
            if rule.catalog && rule.admits(caller) {
                let granted = if rule.actions.is_empty() || caller.narrowed.is_some() {
                    Vec::new()
                } else {
                    vec![Action::Pull]
                };
                return Decision {
                    granted,
                    rule: Some(rule.origin.clone()),
                };
            }
        }
        Decision {
            granted: Vec::new(),
            rule: None,
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn intersect(wanted: &[Action], allowed: &[Action]) -> Vec<Action> {
    let mut granted: Vec<Action> = wanted
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    granted.sort();
    granted.dedup();
    granted
}

impl Rule {
    fn admits(&self, caller: &Caller) -> bool {
        let who = match &caller.user {
            None => self.anonymous,
            Some(user) => {
                self.users.iter().any(|u| u == "*" || u == user)
                    || self.groups.iter().any(|g| caller.groups.contains(g))
                    // `sources` alone: any user those sources vouch for.
                    || (self.users.is_empty() && self.groups.is_empty() && !self.sources.is_empty())
            }
        };
        let source = self.sources.is_empty()
            || caller
                .source
                .is_some_and(|s| self.sources.iter().any(|n| n == s));
        let claims = self.claims.iter().all(|(claim, pattern)| {
            caller
                .claims
                .get(claim)
                .is_some_and(|value| wildcard(pattern, value))
        });
        if !(source && claims) {
            return false;
        }
        let from = self.from.is_empty()
            || caller
                .addr
                .is_some_and(|addr| self.from.iter().any(|net| net.contains(&canonical(addr))));
        who && from
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack listeners) compare as IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// An address or a CIDR network (`10.0.0.5`, `10.0.0.0/8`): a rule's `from`,
/// and `log.request_id_from`.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A repository pattern outside any rule (the `migrate --repos` selector):
/// the same syntax as a rule's `repository`, without placeholders, since
/// there is no caller to fill them in.
#[derive(Debug, Clone)]
pub struct RepoPattern(Glob);

impl RepoPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.contains('$') {
            return Err(format!(
                "repository pattern `{pattern}`: placeholders need a caller"
            ));
        }
        Glob::parse(pattern).map(Self)
    }

    /// The one name the pattern stands for, when it has no wildcard.
    pub fn literal(&self) -> Option<String> {
        let joined = self.0.segments.join("/");
        (!joined.contains('*')).then_some(joined)
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.matches_with(name, None, None)
    }
}

/// A repository pattern: segments separated by `/`, each either `**` (any
/// number of segments, including none) or a literal with `*` wildcards that
/// stay inside the segment, and `${user}` / `${group}` placeholders.
#[derive(Debug, Clone)]
struct Glob {
    segments: Vec<String>,
}

impl Glob {
    fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("repository pattern `{pattern}`: {why}");
        if pattern.is_empty() {
            return Err(bad("empty"));
        }
        let segments: Vec<String> = pattern.split('/').map(str::to_owned).collect();
        for s in &segments {
            if s.is_empty() {
                return Err(bad("empty path segment"));
            }
            if s.contains("**") && s != "**" {
                return Err(bad("`**` must be a whole path segment"));
            }
            let rest = s.replace("${user}", "").replace("${group}", "");
            if rest.contains('$') || rest.contains('{') || rest.contains('}') {
                return Err(bad("unknown placeholder (use ${user} or ${group})"));
            }
        }
        Ok(Self { segments })
    }

    fn matches(&self, name: &str, caller: &Caller) -> bool {
        let uses_group = self.segments.iter().any(|s| s.contains("${group}"));
        if uses_group {
            caller
                .groups
                .iter()
                .any(|group| self.matches_with(name, caller.user.as_deref(), Some(group)))
        } else {
            self.matches_with(name, caller.user.as_deref(), None)
        }
    }

    fn matches_with(&self, name: &str, user: Option<&str>, group: Option<&str>) -> bool {
        let mut expanded = Vec::with_capacity(self.segments.len());
        for segment in &self.segments {
            let mut s = segment.clone();
            for (placeholder, value) in [("${user}", user), ("${group}", group)] {
                if s.contains(placeholder) {
                    // A value that could act as a pattern or a path
                    // separator must not widen the rule.
                    match value.filter(|v| !v.is_empty() && !v.contains(['/', '*'])) {
                        Some(v) => s = s.replace(placeholder, v),
                        None => return false,
                    }
                }
            }
            expanded.push(s);
        }
        let parts: Vec<&str> = name.split('/').collect();
        match_segments(&expanded, &parts)
    }
}

/// Whether the pattern's segments match the name's, `**` standing for any
/// number of segments. Names come from clients, so this runs in time
/// proportional to pattern segments × name segments, whatever the number of
/// `**`: row `j` holds whether the pattern so far matches the name's first
/// `j` segments (the textbook wildcard DP, over segments instead of bytes).
/// Trying every split of the name at each `**` instead is combinatorial.
fn match_segments(pattern: &[String], name: &[&str]) -> bool {
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for segment in pattern {
        if segment == "**" {
            // Any prefix the previous segments matched can be extended by
            // any number of segments.
            let mut reached = false;
            for cell in row.iter_mut() {
                reached |= *cell;
                *cell = reached;
            }
        } else {
            // Right to left, so each cell reads the previous row's value.
            for j in (1..=name.len()).rev() {
                row[j] = row[j - 1] && wildcard(segment, name[j - 1]);
            }
            row[0] = false;
        }
        if !row.contains(&true) {
            return false;
        }
    }
    row[name.len()]
}

/// `*` matches any run of characters within one segment.
fn wildcard(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests;
