//! Policy tests: tables of cases (a caller, a request, the grant expected)
//! run against a policy, so that a change to the rules is checked before it
//! is deployed (`portcullis policy test`, and `check-config` for the files
//! `policy.tests` names).
//!
//! ```toml
//! [[case]]
//! description = "a pull request may not push production images"
//! user = "bot"                      # absent: an anonymous caller
//! groups = ["ci"]
//! from = "10.0.0.7"
//! source = "github"                 # the identity source that vouched
//! claims = { ref = "refs/pull/7/merge" }
//! repository = "prod/app"           # or `catalog = true`
//! actions = ["pull", "push"]        # asked for; "*" is all three
//! expect = ["pull"]                 # granted; [] when nothing is
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Caller, Policy, RuleOrigin};
use crate::auth::scope::Action;

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(rename = "case", default)]
    cases: Vec<toml::Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    from: Option<IpAddr>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    catalog: bool,
    #[serde(default)]
    actions: Vec<String>,
    expect: Vec<String>,
}

/// One case's result.
#[derive(Debug)]
pub struct Outcome {
    /// `file:line` of the case.
    pub at: String,
    pub description: String,
    pub expected: Vec<Action>,
    pub granted: Vec<Action>,
    /// The rule that decided; `None`: no rule matched.
    pub rule: Option<RuleOrigin>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.expected == self.granted
    }
}

fn actions(list: &[String]) -> Result<Vec<Action>, String> {
    let mut parsed = Vec::new();
    for name in list {
        match name.as_str() {
            "*" => parsed.extend(Action::ALL),
            other => parsed
                .push(Action::parse(other).ok_or_else(|| {
                    format!("unknown action `{other}` (pull, push, delete or *)")
                })?),
        }
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// Runs every case of `file` against `policy`. A file that does not parse,
/// or a case that asks for nothing, is an error, so that a broken table
/// never passes by testing nothing.
pub fn run_file(policy: &Policy, file: &Path) -> Result<Vec<Outcome>, CaseError> {
    let text = std::fs::read_to_string(file).map_err(|source| CaseError::Read {
        file: file.to_owned(),
        source,
    })?;
    run_text(policy, file, &text)
}

pub fn run_text(policy: &Policy, file: &Path, text: &str) -> Result<Vec<Outcome>, CaseError> {
    let invalid = |at: usize, message: String| {
        let (line, col) = crate::config::line_col(text, at);
        CaseError::Invalid {
            file: file.to_owned(),
            line,
            col,
            message,
        }
    };
    let parsed: CaseFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        invalid(at, e.message().trim_end().to_owned())
    })?;
    if parsed.cases.is_empty() {
        return Err(invalid(0, "no [[case]] in the file".into()));
    }
    let mut outcomes = Vec::with_capacity(parsed.cases.len());
    for spanned in parsed.cases {
        let at = spanned.span().start;
        let case = spanned.into_inner();
        let bad = |message: String| invalid(at, message);
        let wanted = actions(&case.actions).map_err(bad)?;
        let expected = actions(&case.expect).map_err(bad)?;
        let caller = Caller {
            user: case.user.clone(),
            groups: case.groups.clone(),
            addr: case.from,
            // A test run is short: the names may live as long as it.
            source: case.source.map(|s| &*Box::leak(s.into_boxed_str())),
            claims: case.claims,
            narrowed: None,
        };
        let decision = match (&case.repository, case.catalog) {
            (Some(repository), false) => {
                if wanted.is_empty() {
                    return Err(bad("`actions` is empty: the case asks for nothing".into()));
                }
                if crate::reference::RepoName::parse(repository).is_err() {
                    return Err(bad(format!("`{repository}` is not a repository name")));
                }
                policy.decide(&caller, repository, &wanted)
            }
            (None, true) => policy.decide_catalog(&caller),
            _ => {
                return Err(bad(
                    "give `repository` (with `actions`) or `catalog = true`".into(),
                ));
            }
        };
        let (line, _) = crate::config::line_col(text, at);
        let who = match &case.user {
            Some(user) => user.clone(),
            None => "anonymous".into(),
        };
        let what = match &case.repository {
            Some(repository) => format!("{} on {repository}", join(&wanted)),
            None => "the catalog".into(),
        };
        outcomes.push(Outcome {
            at: format!("{}:{line}", file.display()),
            description: case.description.unwrap_or_else(|| format!("{who}: {what}")),
            expected,
            granted: decision.granted,
            rule: decision.rule,
        });
    }
    Ok(outcomes)
}

/// Actions as `pull, push`, or `nothing`.
pub fn join(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "nothing".into();
    }
    actions
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.add_file(
            Path::new("10.toml"),
            "[[rule]]\ngroups = [\"admins\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\ncatalog = true\n\n\
             [[rule]]\nusers = [\"*\"]\nrepositories = [\"${user}/**\"]\nactions = [\"pull\", \"push\"]\n",
        )
        .unwrap();
        p
    }

    #[test]
    fn cases_pass_and_fail_with_the_deciding_rule() {
        let text = "[[case]]\nuser = \"alice\"\nrepository = \"alice/app\"\nactions = [\"*\"]\nexpect = [\"pull\", \"push\"]\n\n\
                    [[case]]\ndescription = \"wrong on purpose\"\nuser = \"bob\"\nrepository = \"alice/app\"\nactions = [\"pull\"]\nexpect = [\"pull\"]\n\n\
                    [[case]]\nuser = \"root\"\ngroups = [\"admins\"]\ncatalog = true\nexpect = [\"pull\"]\n";
        let outcomes = run_text(&policy(), Path::new("t.toml"), text).unwrap();
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes[0].passed(), "{outcomes:?}");
        assert_eq!(
            outcomes[0].description,
            "alice: pull, push, delete on alice/app"
        );
        assert_eq!(outcomes[0].rule.as_ref().unwrap().index, 2);
        assert!(!outcomes[1].passed());
        assert_eq!(outcomes[1].at, "t.toml:7");
        assert!(outcomes[1].rule.is_none(), "no rule matched bob");
        assert!(outcomes[2].passed());
    }

    #[test]
    fn a_broken_table_is_an_error_not_a_pass() {
        for (text, wanted) in [
            ("", "no [[case]]"),
            (
                "[[case]]\nrepository = \"a\"\nactions = [\"fly\"]\nexpect = []\n",
                "unknown action `fly`",
            ),
            (
                "[[case]]\nrepository = \"a\"\nexpect = []\n",
                "asks for nothing",
            ),
            (
                "[[case]]\nactions = [\"pull\"]\nexpect = []\n",
                "give `repository`",
            ),
            (
                "[[case]]\nrepository = \"A B\"\nactions = [\"pull\"]\nexpect = []\n",
                "not a repository name",
            ),
            (
                "[[case]]\nrepository = \"a\"\nactions = [\"pull\"]\nexpect = []\nexpected = []\n",
                "unknown field",
            ),
        ] {
            let e = run_text(&policy(), Path::new("t.toml"), text).unwrap_err();
            assert!(e.to_string().contains(wanted), "{text:?}: {e}");
        }
    }
}
