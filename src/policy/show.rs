//! `policy show`: the rules in force, in order, written back as TOML (with
//! `*` expanded to the actions it stands for) and each preceded by where it
//! was written, so the output reads like the files and can be pasted into one.

use std::fmt::Write;

use super::{Policy, PolicySource, Rule};

impl Policy {
    /// Every rule in the order they are tried, under a header naming the source.
    pub fn show(&self, source: &PolicySource) -> String {
        let mut out = format!("# policy: {source}\n");
        if self.rules.is_empty() {
            out.push_str("# no rules: every request is denied\n");
            return out;
        }
        let count = self.rules.len();
        let plural = if count == 1 { "" } else { "s" };
        let _ = writeln!(
            out,
            "# {count} rule{plural}, tried in this order; the first that matches decides"
        );
        for rule in &self.rules {
            out.push('\n');
            show_rule(&mut out, rule);
        }
        out
    }
}

fn show_rule(out: &mut String, rule: &Rule) {
    let origin = &rule.origin;
    let _ = writeln!(
        out,
        "# rule #{} at {}:{}",
        origin.index,
        origin.file.display(),
        origin.line
    );
    out.push_str("[[rule]]\n");
    if let Some(description) = &origin.description {
        let _ = writeln!(out, "description = {}", quoted(description));
    }
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|s| quoted(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    if !rule.users.is_empty() {
        let _ = writeln!(out, "users = {}", list(rule.users.clone()));
    }
    if !rule.groups.is_empty() {
        let _ = writeln!(out, "groups = {}", list(rule.groups.clone()));
    }
    if rule.anonymous {
        out.push_str("anonymous = true\n");
    }
    if !rule.sources.is_empty() {
        let _ = writeln!(out, "sources = {}", list(rule.sources.clone()));
    }
    if !rule.claims.is_empty() {
        let claims: Vec<String> = rule
            .claims
            .iter()
            .map(|(name, pattern)| format!("{} = {}", bare_or_quoted(name), quoted(pattern)))
            .collect();
        let _ = writeln!(out, "claims = {{ {} }}", claims.join(", "));
    }
    if !rule.from.is_empty() {
        let from = rule.from.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "from = {}", list(from));
    }
    if !rule.repositories.is_empty() {
        let globs = rule
            .repositories
            .iter()
            .map(|g| g.segments.join("/"))
            .collect();
        let _ = writeln!(out, "repositories = {}", list(globs));
    }
    if rule.catalog {
        out.push_str("catalog = true\n");
    }
    let actions = rule.actions.iter().map(|a| a.as_str().to_owned()).collect();
    let _ = writeln!(out, "actions = {}", list(actions));
}

/// A TOML key: bare when it may be, else quoted.
fn bare_or_quoted(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { key.to_owned() } else { quoted(key) }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
