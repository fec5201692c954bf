//! `portcullis policy explain` run as the real binary over policy files:
//! every matching feature (placeholders, `*` and `**`, groups, anonymous,
//! CIDR, first match across files, default deny, catalog), the exit status,
//! and the repository's own `policies/`; `policy show`; and `serve` with no
//! policy directory running the embedded default.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::process::ServerProcess;

fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run portcullis")
}

/// A temporary directory with policy files under `policies/`.
fn policies(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    dir
}

/// What `explain` said, and how it ended.
struct Explained {
    code: Option<i32>,
    out: String,
    err: String,
}

impl Explained {
    fn line(&self, label: &str) -> &str {
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label:?} in:\n{}{}", self.out, self.err))
    }

    /// Allowed: status 0 and every field saying so.
    #[track_caller]
    fn allowed(&self, granted: &str, rule: &str) {
        assert_eq!(self.code, Some(0), "{}{}", self.out, self.err);
        assert_eq!(self.line("decision:"), "allowed", "{}", self.out);
        assert_eq!(self.line("granted:"), granted, "{}", self.out);
        assert!(!self.out.contains("refused:"), "{}", self.out);
        assert_eq!(self.line("rule:"), rule, "{}", self.out);
    }

    /// Denied: status 1, what was granted anyway and what was refused.
    #[track_caller]
    fn denied(&self, granted: &str, refused: &str, rule: &str) {
        assert_eq!(self.code, Some(1), "{}{}", self.out, self.err);
        assert_eq!(self.line("decision:"), "denied", "{}", self.out);
        assert_eq!(self.line("granted:"), granted, "{}", self.out);
        assert_eq!(self.line("refused:"), refused, "{}", self.out);
        assert_eq!(self.line("rule:"), rule, "{}", self.out);
    }

    #[track_caller]
    fn denied_by_default(&self, refused: &str) {
        self.denied("nothing", refused, "no rule matched: denied by default");
    }

    /// A usage or setup error: status 2, `message` on stderr, nothing on stdout.
    #[track_caller]
    fn error(&self, message: &str) {
        assert_eq!(self.code, Some(2), "{}{}", self.out, self.err);
        assert!(
            self.err.contains(message),
            "{message:?} not in {}",
            self.err
        );
        assert_eq!(self.out, "");
    }
}

/// `portcullis policy explain --dir policies ARGS` in `dir`.
fn explain(dir: &Path, args: &[&str]) -> Explained {
    policy(dir, &[&["explain", "--dir", "policies"][..], args].concat())
}

/// `portcullis policy ARGS` in `dir`: status, stdout, stderr.
fn policy(dir: &Path, args: &[&str]) -> Explained {
    let out = portcullis(dir, &[&["policy"][..], args].concat());
    Explained {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_report_names_caller_request_decision_and_rule() {
    let dir = policies(&[(
        "50-users.toml",
        "# comment\n[[rule]]\ndescription = \"own namespace\"\nusers = [\"*\"]\nrepositories = [\"${user}/**\"]\nactions = [\"pull\", \"push\"]\n",
    )]);
    let e = explain(
        dir.path(),
        &[
            "--user",
            "alice",
            "-g",
            "dev",
            "-g",
            "ops",
            "--from",
            "10.0.0.7",
            "alice/app",
            "push",
        ],
    );
    assert_eq!(
        e.out,
        "caller:   alice (groups: dev, ops) from 10.0.0.7\n\
         request:  push on alice/app\n\
         decision: allowed\n\
         granted:  push\n\
         rule:     policies/50-users.toml:2 (rule #1) \"own namespace\"\n"
    );
    assert_eq!(e.code, Some(0));
    assert_eq!(e.err, "");
    // A partial grant is a denial of the rest (status 1), naming both parts.
    let e = explain(dir.path(), &["--user", "alice", "alice/app", "*"]);
    assert_eq!(e.line("request:"), "pull, push, delete on alice/app");
    e.denied(
        "pull, push",
        "delete",
        "policies/50-users.toml:2 (rule #1) \"own namespace\"",
    );
    // Several actions as a list.
    explain(dir.path(), &["--user", "alice", "alice/app", "push,pull"]).allowed(
        "pull, push",
        "policies/50-users.toml:2 (rule #1) \"own namespace\"",
    );
}

#[test]
fn user_and_group_placeholders() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
description = "own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]

[[rule]]
description = "team repositories"
groups = ["team-a", "team-b"]
repositories = ["teams/${group}/*"]
actions = ["*"]
"#,
    )]);
    let own = "policies/10.toml:2 (rule #1) \"own namespace\"";
    let team = "policies/10.toml:8 (rule #2) \"team repositories\"";
    let d = dir.path();
    explain(d, &["--user", "alice", "alice/app", "push"]).allowed("push", own);
    explain(d, &["--user", "alice", "alice/deep/er/app", "push"]).allowed("push", own);
    // `**` also matches no segment at all: the namespace itself.
    explain(d, &["--user", "alice", "alice", "pull"]).allowed("pull", own);
    explain(d, &["--user", "alice", "bob/app", "pull"]).denied_by_default("pull");
    // The placeholder is the whole segment, not a prefix.
    explain(d, &["--user", "alice", "alice2/app", "pull"]).denied_by_default("pull");

    explain(
        d,
        &[
            "--user",
            "carol",
            "-g",
            "team-a",
            "teams/team-a/api",
            "delete",
        ],
    )
    .allowed("delete", team);
    // Any of the caller's groups may fill the placeholder.
    explain(
        d,
        &[
            "--user",
            "carol",
            "-g",
            "x",
            "-g",
            "team-b",
            "teams/team-b/api",
            "push",
        ],
    )
    .allowed("push", team);
    // But only their own groups.
    explain(
        d,
        &[
            "--user",
            "carol",
            "-g",
            "team-a",
            "teams/team-b/api",
            "push",
        ],
    )
    .denied_by_default("push");
    // `*` stays inside one segment.
    explain(
        d,
        &[
            "--user",
            "carol",
            "-g",
            "team-a",
            "teams/team-a/a/b",
            "pull",
        ],
    )
    .denied_by_default("pull");
    // A group the rule does not name does not get in through the placeholder.
    explain(
        d,
        &[
            "--user",
            "carol",
            "-g",
            "team-c",
            "teams/team-c/api",
            "pull",
        ],
    )
    .denied_by_default("pull");
}

#[test]
fn single_and_double_star() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
users = ["*"]
repositories = ["library/*", "tools-*/bin", "mirror/**/cache"]
actions = ["pull"]
"#,
    )]);
    let rule = "policies/10.toml:2 (rule #1)";
    let d = dir.path();
    for allowed in [
        "library/nginx",
        "tools-go/bin",
        "tools-x/bin",
        "mirror/cache",
        "mirror/a/cache",
        "mirror/a/b/c/cache",
    ] {
        explain(d, &["--user", "u", allowed, "pull"]).allowed("pull", rule);
    }
    for denied in [
        "library",
        "library/a/b",
        "tools/go/bin",
        "tools-go/bin/x",
        "mirror/a/b",
        "mirror/cache/x",
    ] {
        explain(d, &["--user", "u", denied, "pull"]).denied_by_default("pull");
    }
}

#[test]
fn groups_users_and_explicit_denials() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
description = "mallory is locked out"
users = ["mallory"]
repositories = ["**"]
actions = []

[[rule]]
description = "admins"
groups = ["admins"]
repositories = ["**"]
actions = ["*"]
"#,
    )]);
    let d = dir.path();
    let admins = "policies/10.toml:8 (rule #2) \"admins\"";
    explain(d, &["--user", "bob", "-g", "admins", "x/y", "*"])
        .allowed("pull, push, delete", admins);
    explain(d, &["--user", "bob", "x/y", "pull"]).denied_by_default("pull");
    // A user named like a group is not in it.
    explain(d, &["--user", "admins", "x/y", "pull"]).denied_by_default("pull");
    // The first rule matches mallory, even in the admins group, and grants nothing.
    explain(d, &["--user", "mallory", "-g", "admins", "x/y", "pull"]).denied(
        "nothing",
        "pull",
        "policies/10.toml:2 (rule #1) \"mallory is locked out\"",
    );
}

#[test]
fn anonymous_callers_match_only_anonymous_rules() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
description = "public pulls"
anonymous = true
repositories = ["public/**"]
actions = ["pull"]

[[rule]]
description = "every user"
users = ["*"]
repositories = ["**"]
actions = ["pull", "push"]
"#,
    )]);
    let d = dir.path();
    let public = "policies/10.toml:2 (rule #1) \"public pulls\"";
    let e = explain(d, &["--anonymous", "public/tools", "pull"]);
    assert_eq!(e.line("caller:"), "anonymous");
    e.allowed("pull", public);
    explain(d, &["--anonymous", "public/tools", "push"]).denied("nothing", "push", public);
    // `users = ["*"]` means any authenticated user, not anonymous callers.
    explain(d, &["--anonymous", "private/x", "pull"]).denied_by_default("pull");
    // An authenticated user does not match an anonymous rule.
    explain(d, &["--user", "alice", "public/tools", "push"])
        .allowed("push", "policies/10.toml:8 (rule #2) \"every user\"");
}

#[test]
fn from_conditions_with_addresses_and_cidr_blocks() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
description = "push from the office"
users = ["*"]
from = ["10.0.0.0/8", "192.168.1.5", "fd00::/8"]
repositories = ["**"]
actions = ["pull", "push"]

[[rule]]
description = "pull from anywhere"
users = ["*"]
repositories = ["**"]
actions = ["pull"]
"#,
    )]);
    let d = dir.path();
    let office = "policies/10.toml:2 (rule #1) \"push from the office\"";
    let anywhere = "policies/10.toml:9 (rule #2) \"pull from anywhere\"";
    for addr in ["10.1.2.3", "192.168.1.5", "fd12::1", "::ffff:10.9.9.9"] {
        explain(d, &["--user", "u", "--from", addr, "a/b", "push"]).allowed("push", office);
    }
    for addr in ["11.0.0.1", "192.168.1.6", "fe80::1"] {
        explain(d, &["--user", "u", "--from", addr, "a/b", "push"])
            .denied("nothing", "push", anywhere);
    }
    // Without an address, a rule with `from` cannot match.
    explain(d, &["--user", "u", "a/b", "push"]).denied("nothing", "push", anywhere);
    let e = explain(d, &["--user", "u", "--from", "10.0.0.300", "a/b", "push"]);
    e.error("10.0.0.300");
}

#[test]
fn first_match_wins_across_files_in_name_order() {
    // Written in the opposite order to their names: the names decide.
    let dir = policies(&[
        (
            "50-everyone.toml",
            "[[rule]]\ndescription = \"everyone pulls\"\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n\n[[rule]]\ndescription = \"never reached for pulls\"\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n",
        ),
        (
            "10-deny.toml",
            "[[rule]]\ndescription = \"frozen\"\nusers = [\"*\"]\nrepositories = [\"frozen/**\"]\nactions = []\n",
        ),
        // Not a policy file: ignored.
        ("README.md", "[[rule]] this is not TOML"),
    ]);
    let d = dir.path();
    explain(d, &["--user", "u", "frozen/app", "pull"]).denied(
        "nothing",
        "pull",
        "policies/10-deny.toml:1 (rule #1) \"frozen\"",
    );
    explain(d, &["--user", "u", "live/app", "pull"]).allowed(
        "pull",
        "policies/50-everyone.toml:1 (rule #2) \"everyone pulls\"",
    );
    // The second rule of the second file is never consulted: the first
    // matching rule decides even when it grants less than asked.
    explain(d, &["--user", "u", "live/app", "push"]).denied(
        "nothing",
        "push",
        "policies/50-everyone.toml:1 (rule #2) \"everyone pulls\"",
    );
}

#[test]
fn no_rule_or_no_files_deny_by_default() {
    let dir = policies(&[(
        "10.toml",
        "[[rule]]\nusers = [\"alice\"]\nrepositories = [\"a/**\"]\nactions = [\"pull\"]\n",
    )]);
    explain(dir.path(), &["--user", "bob", "a/b", "pull"]).denied_by_default("pull");
    let empty = policies(&[]);
    let e = explain(empty.path(), &["--user", "alice", "a/b", "pull"]);
    e.denied_by_default("pull");
    assert!(e.err.contains("no rules in policies"), "{}", e.err);
    // A missing directory is the embedded default, which denies anonymous
    // callers everything.
    let none = tempfile::tempdir().unwrap();
    let e = explain(none.path(), &["--anonymous", "a/b", "delete"]);
    e.denied_by_default("delete");
    assert!(
        e.err
            .contains("using the embedded default policy (policies does not exist)"),
        "{}",
        e.err
    );
}

#[test]
fn catalog_access() {
    let dir = policies(&[(
        "10.toml",
        r#"
[[rule]]
description = "auditors may not list"
groups = ["auditors"]
catalog = true
actions = []

[[rule]]
description = "admins list"
groups = ["admins"]
catalog = true
repositories = ["**"]
actions = ["*"]

[[rule]]
description = "not a catalog rule"
users = ["*"]
repositories = ["**"]
actions = ["pull"]
"#,
    )]);
    let d = dir.path();
    let e = explain(d, &["--user", "root", "-g", "admins", "--catalog"]);
    assert_eq!(e.code, Some(0), "{}", e.out);
    assert_eq!(e.line("request:"), "catalog listing");
    assert_eq!(e.line("decision:"), "allowed");
    assert_eq!(
        e.line("rule:"),
        "policies/10.toml:8 (rule #2) \"admins list\""
    );
    let e = explain(
        d,
        &[
            "--user",
            "eve",
            "-g",
            "auditors",
            "-g",
            "admins",
            "--catalog",
        ],
    );
    assert_eq!(e.code, Some(1), "{}", e.out);
    assert_eq!(e.line("decision:"), "denied");
    assert_eq!(
        e.line("rule:"),
        "policies/10.toml:2 (rule #1) \"auditors may not list\""
    );
    // Pulling every repository is not listing them.
    let e = explain(d, &["--user", "bob", "--catalog"]);
    assert_eq!(e.code, Some(1), "{}", e.out);
    assert_eq!(e.line("rule:"), "no rule matched: denied by default");
    explain(d, &["--user", "bob", "--catalog", "a/b", "pull"]).error("cannot be used with");
}

#[test]
fn the_shipped_policies() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = repo;
    let admins = "policies/10-admins.toml:2 (rule #1) \"administrators manage every repository\"";
    let own = "policies/50-users.toml:3 (rule #2) \"users manage their own namespace\"";
    let all = "policies/50-users.toml:11 (rule #3) \"users pull everything and list the catalog\"";

    // Administrators: everything, everywhere, and the catalog.
    explain(d, &["--user", "root", "-g", "admins", "library/nginx", "*"])
        .allowed("pull, push, delete", admins);
    explain(
        d,
        &["--user", "root", "-g", "admins", "alice/app", "delete"],
    )
    .allowed("delete", admins);
    let e = explain(d, &["--user", "root", "-g", "admins", "--catalog"]);
    assert_eq!(e.code, Some(0), "{}", e.out);
    assert_eq!(e.line("rule:"), admins);

    // Users: push to and delete in their own namespace, pull everything,
    // list the catalog, delete nothing of others.
    explain(d, &["--user", "alice", "alice/app", "pull,push"]).allowed("pull, push", own);
    explain(d, &["--user", "alice", "alice/team/app", "push"]).allowed("push", own);
    explain(d, &["--user", "alice", "alice/app", "delete"]).allowed("delete", own);
    explain(d, &["--user", "alice", "bob/app", "delete"]).denied("nothing", "delete", all);
    let e = explain(d, &["--user", "alice", "--catalog"]);
    assert_eq!(e.code, Some(0), "{}", e.out);
    assert_eq!(e.line("rule:"), all);
    explain(d, &["--user", "alice", "library/nginx", "pull"]).allowed("pull", all);
    explain(d, &["--user", "alice", "bob/app", "push"]).denied("nothing", "push", all);
    explain(d, &["--user", "alice", "bob/app", "*"]).denied("pull", "push, delete", all);

    // Anonymous callers: nothing.
    for action in ["pull", "push", "delete"] {
        explain(d, &["--anonymous", "library/nginx", action]).denied_by_default(action);
    }
    let e = explain(d, &["--anonymous", "--catalog"]);
    assert_eq!(e.code, Some(1));
    assert_eq!(e.line("rule:"), "no rule matched: denied by default");
}

#[test]
fn the_directory_comes_from_the_configuration() {
    let dir = policies(&[(
        "10.toml",
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )]);
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let out = portcullis(
        dir.path(),
        &[
            "policy",
            "explain",
            "-c",
            "portcullis.toml",
            "--user",
            "u",
            "a/b",
            "pull",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rule:     policies/10.toml:1 (rule #1)")
    );
    // --dir wins over the configuration.
    let out = portcullis(
        dir.path(),
        &[
            "policy",
            "explain",
            "-c",
            "portcullis.toml",
            "--dir",
            "elsewhere",
            "--user",
            "u",
            "a/b",
            "pull",
        ],
    );
    // (`elsewhere` does not exist: the embedded default decides.)
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("rule:     <embedded>/50-users.toml:11 (rule #3)")
    );
}

#[test]
fn bad_policies_and_arguments_are_errors_not_denials() {
    let dir = policies(&[(
        "10.toml",
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )]);
    let d = dir.path();
    for (args, message) in [
        (&["--user", "u", "a/b", "pull"][..], ""),
        (&["--user", "u", "a/b", "fetch"], "unknown action `fetch`"),
        (
            &["--user", "u", "Alice/App", "pull"],
            "not a valid repository name",
        ),
        (
            &["--user", "u", "a//b", "pull"],
            "not a valid repository name",
        ),
        (
            &["--user", "u", "--anonymous", "a/b", "pull"],
            "cannot be used with",
        ),
        (
            &["--group", "g", "--anonymous", "a/b", "pull"],
            "cannot be used with",
        ),
        (&["a/b", "pull"], "--user"),
        (&["--group", "admins", "a/b", "pull"], "--user"),
        (&["--user", "u", "a/b"], "ACTION"),
        (&["--user", "u"], "REPO"),
    ] {
        let e = explain(d, args);
        if message.is_empty() {
            assert_eq!(e.code, Some(0), "{}", e.err);
        } else {
            e.error(message);
        }
    }
    std::fs::write(
        d.join("policies/20-bad.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"fly\"]\n",
    )
    .unwrap();
    explain(d, &["--user", "u", "a/b", "pull"])
        .error("policies/20-bad.toml:4:20: unknown action `fly`");
}

/// `portcullis policy show ARGS` in `dir`.
fn show(dir: &Path, args: &[&str]) -> Explained {
    policy(dir, &[&["show"][..], args].concat())
}

#[test]
fn show_prints_the_embedded_default_when_the_directory_does_not_exist() {
    let empty = tempfile::tempdir().unwrap();
    let e = show(empty.path(), &[]);
    assert_eq!(e.code, Some(0), "{}", e.err);
    let text = &e.out;
    assert!(
        text.starts_with("# policy: the embedded default policy (./policies does not exist)\n"),
        "{text}"
    );
    // Every shipped rule, in order, with its origin, as TOML.
    let admins = text
        .find("# rule #1 at <embedded>/10-admins.toml:2\n[[rule]]\n")
        .unwrap();
    let own = text
        .find(
            "# rule #2 at <embedded>/50-users.toml:3\n[[rule]]\n\
             description = \"users manage their own namespace\"\n\
             users = [\"*\"]\n\
             repositories = [\"${user}/**\"]\n\
             actions = [\"pull\", \"push\", \"delete\"]\n",
        )
        .unwrap_or_else(|| panic!("{text}"));
    let all = text
        .find("# rule #3 at <embedded>/50-users.toml:11\n")
        .unwrap();
    assert!(admins < own && own < all, "{text}");
    // The same rules as the files of policies/ (only the origins differ).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = show(repo, &["--dir", "policies"]);
    assert_eq!(
        shipped.out.lines().skip(1).collect::<Vec<_>>(),
        text.replace("<embedded>/", "policies/")
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
    );
}

#[test]
fn show_prints_the_rules_of_a_directory_with_their_origins() {
    let dir = policies(&[
        (
            "20-b.toml",
            "# second file\n[[rule]]\nanonymous = true\nfrom = [\"10.0.0.0/8\", \"192.0.2.1\"]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n",
        ),
        (
            "10-a.toml",
            "[[rule]]\ndescription = \"ops\"\ngroups = [\"ops\"]\ncatalog = true\nrepositories = [\"**\"]\nactions = [\"*\"]\n",
        ),
    ]);
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let e = show(dir.path(), &["-c", "portcullis.toml"]);
    assert_eq!(e.code, Some(0), "{}", e.err);
    assert_eq!(
        e.out,
        "# policy: the policy directory policies\n\
         # 2 rules, tried in this order; the first that matches decides\n\
         \n\
         # rule #1 at policies/10-a.toml:1\n\
         [[rule]]\n\
         description = \"ops\"\n\
         groups = [\"ops\"]\n\
         repositories = [\"**\"]\n\
         catalog = true\n\
         actions = [\"pull\", \"push\", \"delete\"]\n\
         \n\
         # rule #2 at policies/20-b.toml:2\n\
         [[rule]]\n\
         anonymous = true\n\
         from = [\"10.0.0.0/8\", \"192.0.2.1/32\"]\n\
         repositories = [\"public/**\"]\n\
         actions = [\"pull\"]\n"
    );
    // An empty directory is an explicit "deny everything".
    let empty = policies(&[]);
    let e = show(empty.path(), &["--dir", "policies"]);
    assert_eq!(
        e.out,
        "# policy: the policy directory policies\n# no rules: every request is denied\n"
    );
    // A bad file is an error, at its place.
    std::fs::write(
        empty.path().join("policies/10.toml"),
        "[[rule]]\nusers = [\"*\"]\ncatalogue = true\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    show(empty.path(), &["--dir", "policies"])
        .error("policies/10.toml:3:1: unknown key `catalogue`");
}

#[tokio::test]
async fn serve_in_an_empty_directory_runs_the_embedded_default_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut add = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["user", "add", "alice"])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"alice-password-1\n")
        .unwrap();
    assert!(add.wait().unwrap().success());

    // No --config, no ./policies: what a new user runs.
    let log = d.join("serve.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(d)
        .env("PORTCULLIS_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let server = ServerProcess::spawn(command);
    // Logged before the announcement, so it is there now.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().any(|l| l.contains("INFO")
            && l.contains("the embedded default policy")
            && l.contains("./policies")),
        "{logged}"
    );

    let client = reqwest::Client::new();
    let token = |scope: &'static str| {
        let client = client.clone();
        let url = server.at(&format!("/token?service=portcullis&scope={scope}"));
        async move {
            let res = client
                .get(url)
                .basic_auth("alice", Some("alice-password-1"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: serde_json::Value = res.json().await.unwrap();
            body["token"].as_str().unwrap().to_owned()
        }
    };
    let own = token("repository:alice/app:pull,push,delete").await;
    let data = b"layer of alice";
    let digest = common::sha256(data);
    let res = client
        .post(server.at(&format!("/v2/alice/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&own)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let blob = server.at(&format!("/v2/alice/app/blobs/{digest}"));
    let res = client.head(&blob).bearer_auth(&own).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // The owner cleans up.
    let res = client.delete(&blob).bearer_auth(&own).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let res = client.head(&blob).bearer_auth(&own).send().await.unwrap();
    assert_eq!(res.status(), 404);
    // Someone else's namespace: pull only.
    let other = token("repository:bob/app:pull,push").await;
    let res = client
        .post(server.at(&format!("/v2/bob/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&other)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[test]
fn a_pipelines_claims_are_explained_with_its_identity_source() {
    let dir = policies(&[(
        "30-ci.toml",
        "[[rule]]\nsources = [\"github\"]\nclaims = { repository = \"org/app\", ref = \"refs/heads/main\" }\nrepositories = [\"prod/**\"]\nactions = [\"push\"]\n",
    )]);
    let rule = "policies/30-ci.toml:1 (rule #1)";
    let main = [
        "--user",
        "bot",
        "--identity-source",
        "github",
        "--claim",
        "repository=org/app",
        "--claim",
        "ref=refs/heads/main",
        "prod/app",
        "push",
    ];
    explain(dir.path(), &main).allowed("push", rule);
    let mut pr = main;
    pr[7] = "ref=refs/pull/7/merge";
    explain(dir.path(), &pr).denied_by_default("push");
    // The same claims from another source, or with no source, match nothing.
    let mut gitlab = main;
    gitlab[3] = "gitlab";
    explain(dir.path(), &gitlab).denied_by_default("push");
    explain(
        dir.path(),
        &["--user", "bot", "--claim", "ref=x", "prod/app", "push"],
    )
    .error("--identity-source");
    explain(
        dir.path(),
        &[
            "--user",
            "bot",
            "--identity-source",
            "github",
            "--claim",
            "ref",
            "prod/app",
            "push",
        ],
    )
    .error("write a claim as NAME=VALUE");
}

/// `policy test`'s output and exit status.
fn policy_test(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["policy", "test"];
    all.extend(args);
    let out = portcullis(dir, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn the_shipped_policies_pass_their_tests_and_a_wrong_case_fails_naming_the_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let default_tests = root.join("policy-tests/default.toml");
    let default_tests = default_tests.to_str().unwrap();
    // From a directory without ./policies: the embedded default.
    let cwd = tempfile::tempdir().unwrap();
    let (code, out) = policy_test(cwd.path(), &[default_tests]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the embedded default policy"), "{out}");
    assert!(out.contains("8 cases: 8 passed, 0 failed"), "{out}");

    // The example policies beside the shipped ones, installed together.
    let both = tempfile::tempdir().unwrap();
    for source in ["policies", "examples/policies"] {
        for entry in std::fs::read_dir(root.join(source)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, both.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let examples = root.join("policy-tests/examples.toml");
    let (code, out) = policy_test(
        cwd.path(),
        &[
            examples.to_str().unwrap(),
            "--dir",
            both.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    // A case the policy contradicts: exit 1, the case's line, what was
    // expected and got, and the rule that decided.
    let wrong = cwd.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[case]]\ndescription = \"users push anywhere\"\nuser = \"alice\"\n\
         repository = \"bob/app\"\nactions = [\"push\"]\nexpect = [\"push\"]\n",
    )
    .unwrap();
    let (code, out) = policy_test(cwd.path(), &[default_tests, wrong.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    let line = out.lines().find(|l| l.starts_with("FAIL")).expect(&out);
    assert!(
        line.contains("wrong.toml:1  users push anywhere: expected push, got nothing")
            && line.contains("50-users.toml"),
        "{line}"
    );
    assert!(out.contains("9 cases: 8 passed, 1 failed"), "{out}");

    // A broken table is not a pass.
    std::fs::write(&wrong, "[[case]]\nrepository = \"a\"\nexpect = []\n").unwrap();
    let (code, out) = policy_test(cwd.path(), &[wrong.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("asks for nothing"), "{out}");
}

#[test]
fn check_config_runs_the_policy_tests_it_names() {
    let dir = policies(&[(
        "10.toml",
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"${user}/**\"]\nactions = [\"pull\", \"push\"]\n",
    )]);
    std::fs::write(
        dir.path().join("cases.toml"),
        "[[case]]\nuser = \"alice\"\nrepository = \"alice/app\"\nactions = [\"push\"]\nexpect = [\"push\"]\n",
    )
    .unwrap();
    let config = "[policy]\ndir = \"policies\"\ntests = [\"cases.toml\"]\n";
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    let out = portcullis(dir.path(), &["check-config", "portcullis.toml"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("policy tests: 1 case passed"), "{said}");
    // The policy changes; the test catches it before it is deployed.
    std::fs::write(
        dir.path().join("policies/10.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"${user}/**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    let out = portcullis(dir.path(), &["check-config", "portcullis.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expected push, got nothing"), "{err}");
}
