use std::path::Path;

use super::*;
use Action::*;

fn policy(files: &[(&str, &str)]) -> Policy {
    let mut policy = Policy::default();
    for (name, text) in files {
        policy
            .add_file(Path::new(name), text)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    policy
}

fn user(name: &str, groups: &[&str]) -> Caller {
    Caller {
        user: Some(name.to_owned()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Caller::default()
    }
}

fn anonymous() -> Caller {
    Caller::default()
}

const DEFAULTS: &str = r#"
[[rule]]
description = "admins"
groups = ["admins"]
repositories = ["**"]
actions = ["*"]
catalog = true

[[rule]]
description = "own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]

[[rule]]
description = "read everything"
users = ["*"]
repositories = ["**"]
actions = ["pull"]
"#;

#[test]
fn first_match_wins_and_grants_the_intersection() {
    let p = policy(&[("10-defaults.toml", DEFAULTS)]);
    let alice = user("alice", &[]);
    let d = p.decide(&alice, "alice/app", &[Pull, Push, Delete]);
    assert_eq!(d.granted, [Pull, Push]);
    assert_eq!(d.rule.as_ref().unwrap().index, 2);
    assert_eq!(d.rule.unwrap().line, 9, "the `[[rule]]` header line");
    let d = p.decide(&alice, "bob/app", &[Pull, Push]);
    assert_eq!(d.granted, [Pull]);
    assert_eq!(
        d.rule.unwrap().description.as_deref(),
        Some("read everything")
    );
    let d = p.decide(&user("root", &["admins"]), "bob/app", &[Delete]);
    assert_eq!(d.granted, [Delete]);
}

#[test]
fn no_match_denies() {
    let p = policy(&[("a.toml", DEFAULTS)]);
    let d = p.decide(&anonymous(), "library/alpine", &[Pull]);
    assert!(d.granted.is_empty());
    assert!(d.rule.is_none());
    assert!(
        Policy::default()
            .decide(&user("a", &[]), "a", &[Pull])
            .granted
            .is_empty()
    );
}

#[test]
fn an_empty_action_list_denies_explicitly_before_later_rules() {
    let p = policy(&[
        (
            "00-deny.toml",
            "[[rule]]\nusers = [\"mallory\"]\nrepositories = [\"**\"]\nactions = []\n",
        ),
        ("10-defaults.toml", DEFAULTS),
    ]);
    let d = p.decide(&user("mallory", &[]), "mallory/x", &[Pull]);
    assert!(d.granted.is_empty());
    assert_eq!(d.rule.unwrap().file, Path::new("00-deny.toml"));
}

#[test]
fn order_across_files_is_the_load_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20-pull.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-push.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"team/*\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    let p = Policy::load_dir(dir.path()).unwrap();
    assert_eq!(p.len(), 2);
    let d = p.decide(&user("u", &[]), "team/app", &[Push]);
    assert_eq!(d.granted, [Push]);
    assert!(d.rule.unwrap().file.ends_with("10-push.toml"));
}

#[test]
fn single_star_stays_in_a_segment_double_star_spans() {
    let p = policy(&[(
        "a.toml",
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"team/*\", \"lib/**/base\", \"x*y\"]\nactions = [\"pull\"]\n",
    )]);
    let u = user("u", &[]);
    let allowed = |name: &str| !p.decide(&u, name, &[Pull]).granted.is_empty();
    assert!(allowed("team/app"));
    assert!(!allowed("team/app/sub"));
    assert!(!allowed("team"));
    assert!(allowed("lib/base"));
    assert!(allowed("lib/a/b/c/base"));
    assert!(!allowed("lib/a/b/c/other"));
    assert!(allowed("xy"));
    assert!(allowed("x-and-y"));
    assert!(!allowed("x/y"));
}

#[test]
fn wildcards() {
    assert!(wildcard("*", ""));
    assert!(wildcard("a*", "abc"));
    assert!(wildcard("*c", "abc"));
    assert!(wildcard("a*b*c", "a-b-c"));
    assert!(!wildcard("a*b*c", "a-c"));
    assert!(!wildcard("ab*ba", "aba"));
    assert!(wildcard("abc", "abc"));
    assert!(!wildcard("abc", "abcd"));
}

/// The matcher as it used to be: every split of the name at each `**`.
/// Exponential, but the definition of what a glob means, for small inputs.
fn match_by_splits(pattern: &[String], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=name.len()).any(|skip| match_by_splits(rest, &name[skip..]))
        }
        Some((first, rest)) => match name.split_first() {
            Some((part, tail)) => wildcard(first, part) && match_by_splits(rest, tail),
            None => false,
        },
    }
}

#[test]
fn segment_matching_agrees_with_trying_every_split() {
    let patterns = [
        "**",
        "a",
        "**/a",
        "a/**",
        "**/a/**",
        "a/**/b",
        "**/**",
        "**/a/**/b/**",
        "*/**/a*",
        "a/*/**/b",
        "**/b/**/b",
        "x*/**/*y/**",
    ];
    let names = [
        "a",
        "b",
        "a/b",
        "b/a",
        "a/a/b",
        "a/b/b",
        "xa/by",
        "a/x/b",
        "b/b/b/a",
        "a/b/a/b",
        "x/y/z",
        "xy/a/zy/b",
    ];
    for pattern in patterns {
        let pattern: Vec<String> = pattern.split('/').map(str::to_owned).collect();
        for name in names {
            let name: Vec<&str> = name.split('/').collect();
            assert_eq!(
                match_segments(&pattern, &name),
                match_by_splits(&pattern, &name),
                "{pattern:?} against {name:?}"
            );
        }
    }
}

#[test]
fn many_double_stars_against_a_long_name_answer_at_once() {
    // 128 segments of `a` (255 characters, the longest name) against a
    // pattern that needs a `b` at the end: trying every split of the name at
    // each of the eight `**` is about 10^12 attempts.
    let name = vec!["a"; 128].join("/");
    assert_eq!(name.len(), 255);
    let p = policy(&[(
        "a.toml",
        r#"
[[rule]]
anonymous = true
repositories = ["**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b"]
actions = ["pull"]
"#,
    )]);
    let started = std::time::Instant::now();
    assert!(p.decide(&anonymous(), &name, &[Pull]).granted.is_empty());
    let with_b = format!("{}/b", vec!["a"; 126].join("/"));
    assert_eq!(p.decide(&anonymous(), &with_b, &[Pull]).granted, [Pull]);
    // Generous: the matcher takes microseconds; the old one, hours.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn user_and_group_placeholders() {
    let p = policy(&[(
        "a.toml",
        r#"
[[rule]]
groups = ["*"]
users = ["*"]
repositories = ["teams/${group}/**", "home/${user}"]
actions = ["push"]
"#,
    )]);
    let carol = user("carol", &["web", "ops"]);
    assert_eq!(p.decide(&carol, "teams/ops/tool", &[Push]).granted, [Push]);
    assert_eq!(p.decide(&carol, "teams/web/site", &[Push]).granted, [Push]);
    assert!(p.decide(&carol, "teams/db/x", &[Push]).granted.is_empty());
    assert_eq!(p.decide(&carol, "home/carol", &[Push]).granted, [Push]);
    assert!(p.decide(&carol, "home/dave", &[Push]).granted.is_empty());
    // A user name that looks like a pattern matches only itself.
    assert!(
        p.decide(&user("*", &[]), "home/anything", &[Push])
            .granted
            .is_empty()
    );
}

#[test]
fn groups_and_anonymous() {
    let p = policy(&[(
        "a.toml",
        r#"
[[rule]]
groups = ["ci"]
repositories = ["builds/**"]
actions = ["pull", "push", "delete"]

[[rule]]
anonymous = true
repositories = ["public/**"]
actions = ["pull"]
"#,
    )]);
    assert_eq!(
        p.decide(&user("bot", &["ci"]), "builds/x", &[Delete])
            .granted,
        [Delete]
    );
    assert!(
        p.decide(&user("bob", &[]), "builds/x", &[Pull])
            .granted
            .is_empty()
    );
    assert_eq!(
        p.decide(&anonymous(), "public/x", &[Pull, Push]).granted,
        [Pull]
    );
    // `anonymous` means unauthenticated only.
    assert!(
        p.decide(&user("bob", &[]), "public/x", &[Pull])
            .granted
            .is_empty()
    );
}

#[test]
fn address_conditions() {
    let p = policy(&[(
        "a.toml",
        r#"
[[rule]]
users = ["*"]
from = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
repositories = ["**"]
actions = ["push"]
"#,
    )]);
    let at = |addr: &str| Caller {
        addr: Some(addr.parse().unwrap()),
        ..user("u", &[])
    };
    assert_eq!(p.decide(&at("10.1.2.3"), "r", &[Push]).granted, [Push]);
    assert_eq!(
        p.decide(&at("::ffff:10.1.2.3"), "r", &[Push]).granted,
        [Push]
    );
    assert_eq!(p.decide(&at("192.168.1.7"), "r", &[Push]).granted, [Push]);
    assert_eq!(p.decide(&at("fd12::1"), "r", &[Push]).granted, [Push]);
    assert!(
        p.decide(&at("192.168.1.8"), "r", &[Push])
            .granted
            .is_empty()
    );
    assert!(p.decide(&user("u", &[]), "r", &[Push]).granted.is_empty());
}

#[test]
fn catalog_rules() {
    let p = policy(&[("a.toml", DEFAULTS)]);
    assert_eq!(p.decide_catalog(&user("root", &["admins"])).granted, [Pull]);
    assert!(p.decide_catalog(&user("alice", &[])).granted.is_empty());
}

#[test]
fn bad_files_are_refused_at_the_offending_value() {
    let cases = [
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"**\"]\nactions = [\"write\"]\n",
            "4:12",
            "unknown action `write`",
        ),
        (
            "[[rule]]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
            "1:1",
            "must say who",
        ),
        (
            "\n[[rule]]\nusers = [\"a\"]\nactions = [\"pull\"]\n",
            "2:1",
            "must name `repositories`",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"b\", \"a**\"]\nactions = []\n",
            "3:22",
            "whole path segment",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"a//b\"]\nactions = []\n",
            "3:17",
            "empty path segment",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"${usr}\"]\nactions = []\n",
            "3:17",
            "unknown placeholder",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nfrom = [\"10.0.0.0/33\"]\nrepositories = [\"a\"]\nactions = []\n",
            "3:9",
            "CIDR",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nuser = [\"a\"]\nrepositories = [\"a\"]\nactions = []\n",
            "3:1",
            "unknown key `user` in a rule (did you mean `users`?)",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"a\"]\nactions = []\nwhen = \"always\"\n",
            "5:1",
            "unknown key `when` in a rule (known: description, users, groups, anonymous, sources, claims, from, repositories, catalog, actions)",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"a\"]\n",
            "1:1",
            "missing `actions`",
        ),
        (
            "[[rule]]\nusers = \"a\"\nrepositories = [\"a\"]\nactions = []\n",
            "2:9",
            "`users` must be an array of strings, not string",
        ),
        (
            "[[rule]]\nusers = [\"a\", 1]\nrepositories = [\"a\"]\nactions = []\n",
            "2:15",
            "`users` must be an array of strings, not integer",
        ),
        (
            "[[rule]]\nusers = [\"a\"]\nrepositories = [\"a\"]\ncatalog = \"yes\"\nactions = []\n",
            "4:11",
            "`catalog` must be true or false",
        ),
        ("rules = []\n", "1:1", "unknown key `rules`"),
        ("[[rule]\n", "1:", ""),
    ];
    for (text, place, reason) in cases {
        let err = Policy::default()
            .add_file(Path::new("p/10-x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("p/10-x.toml:{place}")),
            "{text:?} → {err}"
        );
        assert!(err.contains(reason), "{text:?} → {err}");
    }
}

#[test]
fn every_problem_of_every_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-a.toml"),
        "[[rule]]\nusers = [\"a\"]\ncatalogue = true\nrepositories = [\"a**\"]\nactions = [\"fly\"]\n\n[[rule]]\ngroups = [\"g\"]\nfrom = [\"nowhere\"]\nrepositories = [\"b\"]\nactions = []\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-b.toml"),
        "[[rule]]\nusers = [\"b\"]\nrepositories = [\"b\"]\nactions = [\"pull\", \"pul\"]\n",
    )
    .unwrap();
    let Err(PolicyError::Invalid { problems }) = Policy::load_dir(dir.path()) else {
        panic!("accepted");
    };
    let found: Vec<String> = problems
        .iter()
        .map(|p| {
            let name = p.file.file_name().unwrap().to_string_lossy();
            let (line, col) = p.problem.location.unwrap();
            format!("{name}:{line}:{col}")
        })
        .collect();
    assert_eq!(
        found,
        [
            "10-a.toml:3:1",
            "10-a.toml:4:17",
            "10-a.toml:5:12",
            "10-a.toml:9:9",
            "20-b.toml:4:20"
        ],
        "{problems:#?}"
    );
}

#[test]
fn the_shipped_default_policies_load_and_say_what_the_readme_promises() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let p = Policy::load_dir(&dir).unwrap();
    let alice = user("alice", &[]);
    assert_eq!(
        p.decide(&alice, "alice/app", &[Pull, Push]).granted,
        [Pull, Push]
    );
    assert_eq!(p.decide(&alice, "bob/app", &[Pull, Push]).granted, [Pull]);
    assert!(p.decide(&alice, "bob/app", &[Delete]).granted.is_empty());
    // The owner cleans up after CI, and every user lists the catalog.
    assert_eq!(
        p.decide(&alice, "alice/ci/app", &[Delete]).granted,
        [Delete]
    );
    assert_eq!(p.decide_catalog(&alice).granted, [Pull]);
    assert!(p.decide_catalog(&anonymous()).granted.is_empty());
    let admin = user("root", &["admins"]);
    assert_eq!(
        p.decide(&admin, "any/thing", &[Pull, Push, Delete]).granted,
        [Pull, Push, Delete]
    );
    assert!(
        p.decide(&anonymous(), "alice/app", &[Pull])
            .granted
            .is_empty()
    );
}

fn from_source(name: &str, source: &'static str, claims: &[(&str, &str)]) -> Caller {
    Caller {
        source: Some(source),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..user(name, &[])
    }
}

#[test]
fn sources_and_claims_narrow_a_rule_to_a_token_of_one_issuer() {
    let p = policy(&[(
        "10-ci.toml",
        r#"
[[rule]]
sources = ["gha"]
claims = { repository = "org/app", ref = "refs/heads/*" }
repositories = ["prod/**"]
actions = ["push"]

[[rule]]
users = ["*"]
sources = ["file"]
repositories = ["local/**"]
actions = ["pull"]
"#,
    )]);
    let main = from_source(
        "bot",
        "gha",
        &[("repository", "org/app"), ("ref", "refs/heads/main")],
    );
    assert_eq!(p.decide(&main, "prod/x", &[Push]).granted, [Push]);
    // `*` spans slashes in a claim: a claim is not a path.
    let nested = from_source(
        "bot",
        "gha",
        &[("repository", "org/app"), ("ref", "refs/heads/feature/x")],
    );
    assert_eq!(p.decide(&nested, "prod/x", &[Push]).granted, [Push]);
    let pr = from_source(
        "bot",
        "gha",
        &[("repository", "org/app"), ("ref", "refs/pull/1/merge")],
    );
    assert!(p.decide(&pr, "prod/x", &[Push]).granted.is_empty());
    let missing = from_source("bot", "gha", &[("repository", "org/app")]);
    assert!(p.decide(&missing, "prod/x", &[Push]).granted.is_empty());
    let elsewhere = from_source(
        "bot",
        "gitlab",
        &[("repository", "org/app"), ("ref", "refs/heads/main")],
    );
    assert!(
        p.decide(&elsewhere, "prod/x", &[Push]).granted.is_empty(),
        "the same claims from another issuer"
    );
    assert_eq!(
        p.decide(&from_source("carol", "file", &[]), "local/a", &[Pull])
            .granted,
        [Pull]
    );
    assert!(
        p.decide(&from_source("carol", "corp", &[]), "local/a", &[Pull])
            .granted
            .is_empty()
    );
    assert!(p.decide(&anonymous(), "prod/x", &[Push]).granted.is_empty());
}

#[test]
fn claims_need_sources_and_string_patterns() {
    let cases = [
        (
            "[[rule]]\nusers = [\"*\"]\nclaims = { ref = \"x\" }\nrepositories = [\"a\"]\nactions = []\n",
            "`claims` needs `sources`",
        ),
        (
            "[[rule]]\nsources = [\"s\"]\nclaims = { ref = 1 }\nrepositories = [\"a\"]\nactions = []\n",
            "`claims.ref` must be a string",
        ),
        (
            "[[rule]]\nsources = [\"s\"]\nclaims = {}\nrepositories = [\"a\"]\nactions = []\n",
            "`claims` names no claim",
        ),
        (
            "[[rule]]\nsources = [\"s\"]\nclaims = [\"ref\"]\nrepositories = [\"a\"]\nactions = []\n",
            "`claims` must be a table",
        ),
    ];
    for (text, reason) in cases {
        let err = Policy::default()
            .add_file(Path::new("p/10-x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{text:?} → {err}");
    }
}

#[test]
fn show_writes_sources_and_claims_back_as_they_decide() {
    let text = r#"
[[rule]]
sources = ["gha"]
claims = { ref = "refs/heads/*", "job.name" = "build \"x\"" }
repositories = ["prod/**"]
actions = ["push"]
"#;
    let p = policy(&[("10-ci.toml", text)]);
    let shown = p.show(&PolicySource::Dir("policies".into()));
    assert!(shown.contains("sources = [\"gha\"]\n"), "{shown}");
    assert!(
        shown.contains(r#"claims = { "job.name" = 'build "x"', ref = "refs/heads/*" }"#),
        "{shown}"
    );
    let again = policy(&[("shown.toml", &shown)]);
    let job = from_source(
        "bot",
        "gha",
        &[("ref", "refs/heads/main"), ("job.name", "build \"x\"")],
    );
    let other = from_source(
        "bot",
        "gha",
        &[("ref", "refs/heads/main"), ("job.name", "y")],
    );
    for p in [&p, &again] {
        assert_eq!(p.decide(&job, "prod/a", &[Push]).granted, [Push]);
        assert!(p.decide(&other, "prod/a", &[Push]).granted.is_empty());
    }
}

#[test]
fn an_access_token_narrows_what_the_rules_grant_and_never_widens_it() {
    use crate::auth::access_tokens::TokenScope;
    let p = policy(&[(
        "10.toml",
        r#"
[[rule]]
users = ["alice"]
repositories = ["team/**", "other/**"]
actions = ["pull", "push"]
catalog = true
"#,
    )]);
    let scoped = Caller {
        narrowed: Some(
            vec![
                TokenScope::parse("team/app:pull,push,delete").unwrap(),
                TokenScope::parse("secret/**:*").unwrap(),
            ]
            .into(),
        ),
        ..user("alice", &[])
    };
    let all = [Action::Pull, Action::Push, Action::Delete];
    assert_eq!(
        p.decide(&scoped, "team/app", &all).granted,
        [Action::Pull, Action::Push]
    );
    assert!(p.decide(&scoped, "other/x", &all).granted.is_empty());
    assert!(
        p.decide(&scoped, "secret/x", &all).granted.is_empty(),
        "no rule: the scope adds nothing"
    );
    assert!(p.decide_catalog(&scoped).granted.is_empty());
    assert_eq!(
        p.decide_catalog(&user("alice", &[])).granted,
        [Action::Pull]
    );
}
