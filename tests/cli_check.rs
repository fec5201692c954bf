//! `portcullis check-config` checks everything `serve` would load: the
//! configuration, the policy files (or the embedded default), the users file
//! and the key directory, each problem at its own `file:line:col`.

use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path, config: &str) -> (Option<i32>, String, String) {
    std::fs::write(dir.join("portcullis.toml"), config).unwrap();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "portcullis.toml"])
        .current_dir(dir)
        .output()
        .expect("run portcullis");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_lines(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "missing line {line:?} in:\n{text}"
        );
    }
}

/// For lines whose end (a parser's or the OS's wording) is not ours to pin.
#[track_caller]
fn assert_line_starting(text: &str, prefix: &str) {
    assert!(
        text.lines().any(|l| l.starts_with(prefix)),
        "no line starting {prefix:?} in:\n{text}"
    );
}

#[test]
fn every_problem_of_the_policy_users_and_keys_is_reported_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("rules")).unwrap();
    std::fs::write(
        d.join("rules/10-ok.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    // Four problems in one file: the unknown key `serve` refused while
    // check-config said ok, a bad glob, a bad action, a bad CIDR.
    std::fs::write(
        d.join("rules/20-bad.toml"),
        "[[rule]]\nusers = [\"*\"]\ncatalogue = true\nrepositories = [\"a**\"]\nactions = [\"pull\", \"fly\"]\n\n[[rule]]\ngroups = [\"ci\"]\nfrom = [\"10.0.0.0/33\"]\nrepositories = [\"builds/**\"]\nactions = [\"push\"]\n",
    )
    .unwrap();
    std::fs::write(d.join("users.toml"), "[users.alice]\npassword = 5\n").unwrap();
    std::fs::create_dir(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/token-20260101.key"), "not a key\n").unwrap();
    let (code, out, err) = check(
        d,
        "[policy]\ndir = \"rules\"\n[users]\nfile = \"users.toml\"\n[token]\nkey_dir = \"keys\"\n",
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert_lines(
        &err,
        &[
            "rules/20-bad.toml:3:1: unknown key `catalogue` in a rule (did you mean `catalog`?)",
            "rules/20-bad.toml:4:17: repository pattern `a**`: `**` must be a whole path segment",
            "rules/20-bad.toml:5:20: unknown action `fly` (pull, push, delete, *)",
            "rules/20-bad.toml:9:9: `10.0.0.0/33` is not an address or CIDR block",
            "rules/20-bad.toml: 4 problems",
            "users.toml: 1 problem",
            "keys: 1 problem",
            "check-config: 6 problems in 3 files: `serve` would refuse to start",
        ],
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("users.toml:2:12: ") && l.contains("invalid type")),
        "{err}"
    );
    assert_line_starting(&err, "keys/token-20260101.");
    assert!(!err.contains("10-ok.toml"), "{err}");
}

#[test]
fn a_htpasswd_users_file_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.htpasswd"),
        "# users\nalice:$apr1$weak$hash\n",
    )
    .unwrap();
    let (code, out, err) = check(dir.path(), "[users]\nfile = \"users.htpasswd\"\n");
    assert_eq!(code, Some(2), "{out}{err}");
    assert_line_starting(&err, "users.htpasswd:2:1: user `alice`: only bcrypt");
}

#[test]
fn a_fresh_directory_checks_ok_and_says_what_serve_will_use() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(dir.path(), "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_lines(
        &out,
        &[
            "policy: the embedded default policy (./policies does not exist): 3 rules (`portcullis policy show`)",
            "users: ./users.toml does not exist: no users yet (`portcullis user add NAME`)",
            "keys: ./certs does not exist: keys will be generated at first start",
            "portcullis.toml: ok, `serve` would start",
        ],
    );
    // An empty key directory is fine as well; an empty policy directory is
    // a choice, said but not refused.
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let (code, out, err) = check(dir.path(), "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_lines(
        &out,
        &[
            "policy: the policy directory ./policies: no rules, every request will be denied (`portcullis policy show`)",
            "keys: ./certs: no signing key yet: keys will be generated at first start",
        ],
    );
}

#[test]
fn a_type_error_in_a_section_does_not_hide_its_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(
        dir.path(),
        "[storage]\nroot = 5\nupload_max_idle_secs = 0\nmax_upload = 1\n",
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert_line_starting(&err, "portcullis.toml:2:8: in [storage]");
    assert_lines(
        &err,
        &[
            "portcullis.toml:3:1: storage.upload_max_idle_secs must be positive",
            "portcullis.toml:4:1: unknown key `storage.max_upload`",
            "portcullis.toml: 3 problems",
        ],
    );
}

#[test]
fn the_files_named_by_a_configuration_with_problems_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/10.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pul\"]\n",
    )
    .unwrap();
    let (code, out, err) = check(dir.path(), "[policy]\ndir = \"rules\"\n[log]\nlevel = 3\n");
    assert_eq!(code, Some(2), "{out}{err}");
    assert_line_starting(&err, "portcullis.toml:4:9: in [log]");
    assert_lines(
        &err,
        &[
            "rules/10.toml:4:12: unknown action `pul` (pull, push, delete, *)",
            "check-config: 2 problems in 2 files: `serve` would refuse to start",
        ],
    );
    // A syntax error leaves the places unknown: nothing else is checked.
    let (code, out, err) = check(dir.path(), "[policy\ndir = \"rules\"\n");
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("portcullis.toml:1:"), "{err}");
    assert!(!err.contains("rules/10.toml"), "{err}");
    assert!(
        out.contains("not checked until the configuration parses"),
        "{out}"
    );
}

/// Without FILE, check-config checks what `serve` in the same directory
/// would run with: `./portcullis.toml` when there is one, else the embedded
/// default (whose `./policies` may still be broken).
#[test]
fn without_a_file_the_configuration_serve_would_choose_is_checked() {
    let run = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("check-config")
            .current_dir(dir)
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .expect("run portcullis");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dir.path());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_lines(
        &stdout,
        &["configuration: embedded default (no ./portcullis.toml)"],
    );

    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/10-bad.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pul\"]\n",
    )
    .unwrap();
    let (code, _, stderr) = run(dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert_line_starting(&stderr, "./policies/10-bad.toml:4:");

    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[server]\nlisten = 5000\n",
    )
    .unwrap();
    let (code, _, stderr) = run(dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert_line_starting(&stderr, "portcullis.toml:2:");
}

#[test]
fn an_openid_issuer_is_checked_before_it_vouches_for_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(
        dir.path(),
        "[identity]\norder = [\"file\", \"sso\"]\n\n\
         [[identity.oidc]]\nname = \"sso\"\nissuer = \"http://idp.example\"\naudiences = []\n\n\
         [[identity.oidc]]\nname = \"sso\"\nissuer = \"ftp://idp.example\"\naudiences = [\"r\"]\nleeway_secs = 3600\n",
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert_line_starting(
        &err,
        "portcullis.toml:6:1: identity.oidc `sso`: `http://idp.example` is plain http",
    );
    assert_lines(
        &err,
        &[
            "portcullis.toml:7:1: identity.oidc `sso`: audiences must list the `aud` values this registry accepts",
            "portcullis.toml:11:1: identity.oidc `sso`: `ftp://idp.example` is not an https:// URL",
            "portcullis.toml:13:1: identity.oidc `sso`: leeway_secs above 300 would accept tokens long expired",
        ],
    );
    assert_line_starting(
        &err,
        "portcullis.toml:10:1: identity source name `sso` is used twice",
    );
    assert_line_starting(
        &err,
        "portcullis.toml:2:1: identity.order names the OIDC issuer `sso`",
    );
}

#[test]
fn the_sign_in_page_needs_an_issuer_that_takes_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = "[[identity.oidc]]\nname = \"sso\"\nissuer = \"https://idp.example\"\naudiences = [\"registry\"]\n\n";
    let (code, out, err) = check(
        dir.path(),
        &format!(
            "{issuer}[login]\nissuer = \"corp\"\nclient_id = \"registry\"\nsession_secs = 5\n"
        ),
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert_lines(
        &err,
        &[
            "portcullis.toml:7:1: login.issuer `corp` is not the name of an [[identity.oidc]]",
            "portcullis.toml:9:1: login.session_secs: must be between 60 and 86400",
        ],
    );
    let (code, out, err) = check(
        dir.path(),
        &format!("{issuer}[login]\nissuer = \"sso\"\nclient_id = \"portcullis\"\n"),
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert_line_starting(
        &err,
        "portcullis.toml:8:1: login.client_id `portcullis` must be one of identity.oidc `sso`'s audiences",
    );
    // The client secret is read as `serve` would read it.
    let (code, out, err) = check(
        dir.path(),
        &format!(
            "{issuer}[login]\nissuer = \"sso\"\nclient_id = \"registry\"\nclient_secret_file = \"missing\"\n"
        ),
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("login.client_secret_file missing"), "{err}");
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let (code, out, err) = check(
        dir.path(),
        &format!(
            "{issuer}[login]\nissuer = \"sso\"\nclient_id = \"registry\"\nclient_secret_file = \"secret\"\n"
        ),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_lines(
        &out,
        &["login: sign-in page at /login through `sso` as client `registry` (not contacted)"],
    );
    assert!(!out.contains("s3cret") && !err.contains("s3cret"));
}

#[test]
fn the_metrics_token_and_the_audit_trail_are_read_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty-token"), "\n").unwrap();
    let (code, out, err) = check(
        dir.path(),
        "[metrics]\ntoken_file = \"empty-token\"\n[audit]\nfile = \"no-such-dir/audit.jsonl\"\n",
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("metrics.token_file empty-token: empty"),
        "{err}"
    );
    assert!(
        err.contains("audit.file no-such-dir/audit.jsonl: its directory does not exist"),
        "{err}"
    );
    std::fs::write(dir.path().join("token"), "scrape-me\n").unwrap();
    let (code, out, err) = check(
        dir.path(),
        "[metrics]\ntoken_file = \"token\"\n[audit]\nfile = \"-\"\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_lines(
        &out,
        &[
            "metrics: /metrics requires the token of token",
            "audit: JSON lines to stdout",
        ],
    );
    assert!(!out.contains("scrape-me"));
}
