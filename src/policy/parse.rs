//! Reading one policy file into rules.
//!
//! The file is walked as a spanned TOML tree rather than through serde, so
//! that every problem — an unknown key, a value of the wrong type, a bad
//! glob, address or action — is reported at the offending value, and all of
//! them at once: whoever fixes a file should not have to run the check once
//! per mistake.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Glob, Rule, RuleOrigin, parse_net};
use crate::auth::scope::Action;
use crate::config::{Problem, Reader, line_col};

/// The keys a rule may have, in the order `policy show` prints them.
pub(super) const RULE_KEYS: [&str; 10] = [
    "description",
    "users",
    "groups",
    "anonymous",
    "sources",
    "claims",
    "from",
    "repositories",
    "catalog",
    "actions",
];

/// The rules of one file, numbered from `first_index`, or every problem in it.
pub(super) fn rules(
    file: &Path,
    text: &str,
    first_index: usize,
) -> Result<Vec<Rule>, Vec<Problem>> {
    let mut reader = Reader::new(text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    for e in syntax {
        reader.at_opt(e.span(), e.message().trim_end().to_owned());
    }
    if !reader.problems.is_empty() {
        return Err(reader.problems);
    }
    let mut rules = Vec::new();
    for (key, value) in root.get_ref().iter() {
        if key.get_ref() != "rule" {
            reader.at(
                key.span(),
                format!(
                    "unknown key `{}` (a policy file holds `[[rule]]` tables)",
                    key.get_ref()
                ),
            );
            continue;
        }
        let DeValue::Array(items) = value.get_ref() else {
            reader.at(value.span(), "`rule` must be written `[[rule]]`".to_owned());
            continue;
        };
        for item in items {
            let DeValue::Table(table) = item.get_ref() else {
                reader.at(item.span(), "`rule` must be written `[[rule]]`".to_owned());
                continue;
            };
            let origin = RuleOrigin {
                file: file.to_owned(),
                line: line_col(text, item.span().start).0,
                index: first_index + rules.len(),
                description: None,
            };
            if let Some(rule) = reader.rule(table, item.span(), origin) {
                rules.push(rule);
            }
        }
    }
    if reader.problems.is_empty() {
        Ok(rules)
    } else {
        reader.problems.sort_by_key(|p| p.location);
        Err(reader.problems)
    }
}

/// What reading a rule needs beyond the problem list config.rs keeps.
trait RuleReader {
    fn rule(&mut self, table: &DeTable<'_>, span: Range<usize>, origin: RuleOrigin)
    -> Option<Rule>;
    fn string(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Option<String>;
    fn boolean(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> bool;
    fn claims(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<(String, String)>;
    fn strings(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Vec<(String, Range<usize>)>;
    fn wrong_type(&mut self, key: &str, wanted: &str, found: &DeValue<'_>, span: Range<usize>);
}

impl RuleReader for Reader<'_> {
    /// One `[[rule]]` table; `None` when it has a problem (recorded).
    fn rule(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        origin: RuleOrigin,
    ) -> Option<Rule> {
        let before = self.problems.len();
        let mut rule = Rule {
            origin,
            users: Vec::new(),
            groups: Vec::new(),
            anonymous: false,
            from: Vec::new(),
            sources: Vec::new(),
            claims: Vec::new(),
            repositories: Vec::new(),
            catalog: false,
            actions: Vec::new(),
        };
        let mut actions_given = false;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "description" => rule.origin.description = self.string(key.get_ref(), value),
                "users" => {
                    rule.users = self
                        .strings(key.get_ref(), value)
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                }
                "groups" => {
                    rule.groups = self
                        .strings(key.get_ref(), value)
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                }
                "anonymous" => rule.anonymous = self.boolean(key.get_ref(), value),
                "sources" => {
                    rule.sources = self
                        .strings(key.get_ref(), value)
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                }
                "claims" => rule.claims = self.claims(value),
                "catalog" => rule.catalog = self.boolean(key.get_ref(), value),
                "from" => {
                    for (s, at) in self.strings(key.get_ref(), value) {
                        match parse_net(&s) {
                            Some(net) => rule.from.push(net),
                            None => self.at(at, format!("`{s}` is not an address or CIDR block")),
                        }
                    }
                }
                "repositories" => {
                    for (s, at) in self.strings(key.get_ref(), value) {
                        match Glob::parse(&s) {
                            Ok(glob) => rule.repositories.push(glob),
                            Err(message) => self.at(at, message),
                        }
                    }
                }
                "actions" => {
                    actions_given = true;
                    for (s, at) in self.strings(key.get_ref(), value) {
                        match s.as_str() {
                            "*" => rule.actions.extend(Action::ALL),
                            other => match Action::parse(other) {
                                Some(action) => rule.actions.push(action),
                                None => self.at(
                                    at,
                                    format!("unknown action `{other}` (pull, push, delete, *)"),
                                ),
                            },
                        }
                    }
                }
                other => self.at(key.span(), unknown_key(other)),
            }
        }
        rule.actions.sort();
        rule.actions.dedup();
        let has = |name: &str| table.iter().any(|(k, _)| k.get_ref() == name);
        if !actions_given {
            self.at(
                span.clone(),
                "missing `actions` (write `actions = []` to deny explicitly)".to_owned(),
            );
        }
        if !has("users") && !has("groups") && !has("anonymous") && !has("sources") {
            self.at(
                span.clone(),
                "a rule must say who it is for: `users`, `groups`, `sources` or `anonymous = true`"
                    .into(),
            );
        }
        if has("claims") && rule.sources.is_empty() {
            self.at(
                span.clone(),
                "`claims` needs `sources`: a claim means what the issuer that signed it says"
                    .into(),
            );
        }
        if !has("repositories") && !has("catalog") {
            self.at(
                span,
                "a rule must name `repositories` or set `catalog = true`".into(),
            );
        }
        (self.problems.len() == before).then_some(rule)
    }

    fn string(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.wrong_type(key, "a string", other, value.span());
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> bool {
        match value.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                self.wrong_type(key, "true or false", other, value.span());
                false
            }
        }
    }

    /// `claims = { name = "pattern", … }`.
    fn claims(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<(String, String)> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                "claims",
                "a table of claim names and patterns",
                value.get_ref(),
                value.span(),
            );
            return Vec::new();
        };
        let mut found = Vec::new();
        for (name, pattern) in table.iter() {
            match pattern.get_ref() {
                DeValue::String(p) => found.push((name.get_ref().to_string(), p.to_string())),
                other => self.wrong_type(
                    &format!("claims.{}", name.get_ref()),
                    "a string",
                    other,
                    pattern.span(),
                ),
            }
        }
        if table.is_empty() {
            self.at(value.span(), "`claims` names no claim".into());
        }
        found
    }

    /// An array of strings, each with its place (for pointing at a bad one).
    fn strings(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, "an array of strings", value.get_ref(), value.span());
            return Vec::new();
        };
        let mut found = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(s) => found.push((s.to_string(), item.span())),
                other => self.wrong_type(key, "an array of strings", other, item.span()),
            }
        }
        found
    }

    fn wrong_type(&mut self, key: &str, wanted: &str, found: &DeValue<'_>, span: Range<usize>) {
        self.at(
            span,
            format!("`{key}` must be {wanted}, not {}", found.type_str()),
        );
    }
}

/// Names the closest known key when the unknown one looks like a misspelling
/// of it (`catalogue`), else lists them all.
fn unknown_key(key: &str) -> String {
    let closest = RULE_KEYS
        .iter()
        .map(|known| (edit_distance(key, known), known))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match closest {
        Some((_, known)) => format!("unknown key `{key}` in a rule (did you mean `{known}`?)"),
        None => format!(
            "unknown key `{key}` in a rule (known: {})",
            RULE_KEYS.join(", ")
        ),
    }
}

/// Levenshtein distance, in characters (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}
