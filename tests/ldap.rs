//! Directory logins: the real binary with an `[[identity.ldap]]` source
//! against a real slapd of the test's own (`common::slapd`), asked through
//! `/token` as docker and skopeo ask. Groups from `memberOf`, from group
//! searches (`member`, `uniqueMember`, `memberUid`) and a nested walk feed
//! the policies; names that would widen a filter log no one in and are
//! searched escaped (slapd's own log says so); a directory that stops
//! answering gets a 503 for its users, not a failed login, and recovers.
use crate::common;

use std::fs;
use std::process::{Command, Stdio};

use common::process::{ServerProcess, copy_project_policies};
use common::slapd::{Slapd, SlapdOptions, tree};
use serde_json::Value;

use crate::logs::Log;

/// A Portcullis whose identity chain has a directory `corp` on `slapd`.
struct World {
    slapd: Slapd,
    dir: tempfile::TempDir,
    server: ServerProcess,
    log: Log,
    client: reqwest::Client,
}

/// What a world's configuration says beyond the common part.
#[derive(Default)]
struct Setup<'a> {
    options: SlapdOptions,
    /// Lines of `[[identity.ldap]]`.
    ldap: &'a str,
    /// Lines of `[identity.ldap.groups]`.
    groups: &'a str,
    /// `[identity] order`, when set.
    order: Option<&'a str>,
    /// A policy file of its own (else the project's policies).
    policy: Option<&'a str>,
    /// Users of the users file, added before the server starts: (name,
    /// password).
    local: &'a [(&'a str, &'a str)],
    /// How Portcullis reaches the directory.
    transport: Transport,
    /// The CA file Portcullis trusts the directory with, in place of the
    /// test CA that signed slapd's certificate.
    other_ca: Option<&'a std::path::Path>,
    /// A second directory, `lab`, after `corp` (plain LDAP, no groups).
    second: Option<&'a Slapd>,
    /// The user filter, in place of inetOrgPerson entries by `uid`.
    user_filter: Option<&'a str>,
}

#[derive(Default, Clone, Copy)]
enum Transport {
    #[default]
    Plain,
    Ldaps,
    StartTls,
}

const GROUP_POLICY: &str = r#"
[[rule]]
description = "developers push in team/"
groups = ["ldap:developers"]
repositories = ["team/**"]
actions = ["pull", "push"]

[[rule]]
description = "everyone in a group pushes in that group's namespace"
users = ["*"]
repositories = ["${group}/**"]
actions = ["pull", "push"]

[[rule]]
description = "users manage their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push", "delete"]
"#;

fn start(setup: Setup<'_>) -> World {
    let slapd = Slapd::start_seeded(setup.options);
    start_with(slapd, &setup)
}

fn start_with(slapd: Slapd, setup: &Setup<'_>) -> World {
    let dir = tempfile::tempdir().unwrap();
    match setup.policy {
        Some(policy) => {
            fs::create_dir_all(dir.path().join("policies")).unwrap();
            fs::write(dir.path().join("policies/10-test.toml"), policy).unwrap();
        }
        None => copy_project_policies(dir.path()),
    }
    fs::write(
        dir.path().join("ldap-password"),
        format!("{}\n", tree::SERVICE_PASSWORD),
    )
    .unwrap();
    let order = setup
        .order
        .map(|o| format!("[identity]\norder = {o}\n"))
        .unwrap_or_default();
    let ca = || {
        let ca = setup.other_ca.unwrap_or(slapd.ca_cert());
        format!("ca_file = {:?}\n", ca.to_str().unwrap())
    };
    let (url, tls) = match setup.transport {
        Transport::Plain => (slapd.url(), String::new()),
        Transport::Ldaps => (slapd.ldaps_url(), ca()),
        Transport::StartTls => (slapd.url(), format!("starttls = true\n{}", ca())),
    };
    let config = format!(
        "[storage]\nroot = \"data\"\n[users]\nfile = \"users.toml\"\n\
         [auth]\nmax_failures_per_account = 5\n\
         {order}\
         [[identity.ldap]]\nname = \"corp\"\nurls = [\"{url}\"]\n\
         bind_dn = \"{service}\"\nbind_password_file = \"ldap-password\"\n\
         user_base = \"{people}\"\n\
         user_filter = \"{user_filter}\"\n\
         cache_secs = 1\n{tls}{ldap}\n\
         [identity.ldap.groups]\n{groups}\n{second}",
        service = tree::SERVICE_DN,
        people = tree::PEOPLE,
        ldap = setup.ldap,
        groups = setup.groups,
        user_filter = setup
            .user_filter
            .unwrap_or("(&(objectClass=inetOrgPerson)(uid={username}))"),
        second = setup.second.map_or_else(String::new, |lab| format!(
            "[[identity.ldap]]\nname = \"lab\"\nurls = [\"{}\"]\n\
             bind_dn = \"{}\"\nbind_password_file = \"ldap-password\"\n\
             user_base = \"{}\"\ncache_secs = 1\n[identity.ldap.groups]\nfrom = \"none\"\n",
            lab.url(),
            tree::SERVICE_DN,
            tree::PEOPLE
        )),
    );
    fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    for (name, password) in setup.local {
        common::process::run_in(dir.path(), &["user", "add", name], &format!("{password}\n"));
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("PORTCULLIS_LOG", "info")
        .stderr(Stdio::piped());
    let mut server = ServerProcess::spawn(command);
    let log = Log::of(&mut server);
    World {
        slapd,
        dir,
        server,
        log,
        client: reqwest::Client::new(),
    }
}

impl World {
    /// `GET /token` for `scope` with Basic `user:password` (any bytes).
    async fn token(&self, user: &str, password: &str, scope: &str) -> (u16, Value) {
        common::basic_token(&self.client, &self.server.url, (user, password), scope, &[]).await
    }

    /// `POST /token` with `form` plus the service and a client id.
    async fn post_token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let mut all = vec![("service", "portcullis"), ("client_id", "test")];
        all.extend_from_slice(form);
        let response = self
            .client
            .post(self.server.at("/token"))
            .form(&all)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A refresh-token grant.
    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// `GET /v2/_catalog` with a bearer token.
    async fn catalog(&self, token: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.server.at("/v2/_catalog"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The actions a login of `user` gets on `repository`; panics unless
    /// the login succeeded.
    async fn actions(&self, user: &tree::User, repository: &str) -> Vec<String> {
        let scope = format!("repository:{repository}:pull,push");
        let (status, body) = self.token(user.uid, user.password, &scope).await;
        assert_eq!(status, 200, "{} on {repository}: {body}", user.uid);
        common::granted_actions(&common::token_claims(&body), repository)
    }
}

const PULL_PUSH: [&str; 2] = ["pull", "push"];

/// A directory with the memberof overlay, groups from `memberOf` prefixed
/// `ldap:`, and [`GROUP_POLICY`].
fn member_of() -> Setup<'static> {
    Setup {
        options: SlapdOptions {
            memberof: true,
            ..Default::default()
        },
        groups: "from = \"member_of\"\nprefix = \"ldap:\"\n",
        policy: Some(GROUP_POLICY),
        ..Default::default()
    }
}

#[tokio::test]
async fn directory_users_log_in_and_their_member_of_groups_feed_the_policy() {
    let mut w = start(member_of());
    // alice and bob are developers, carol is not.
    assert_eq!(w.actions(&tree::ALICE, "team/app").await, PULL_PUSH);
    assert_eq!(w.actions(&tree::BOB, "team/app").await, PULL_PUSH);
    assert!(w.actions(&tree::CAROL, "team/app").await.is_empty());
    // `${user}` is the directory's name for them.
    assert_eq!(w.actions(&tree::CAROL, "carol/app").await, PULL_PUSH);
    let line = w.log.wait_for(&["token issued", "user=\"alice\""]);
    assert!(line.contains("source=\"corp\""), "{line}");

    // Wrong password, unknown user, empty password: 401, and the log tells
    // the first two apart.
    let (status, _) = w.token("alice", "wrong", "repository:team/app:pull").await;
    assert_eq!(status, 401);
    w.log
        .wait_for(&["token refused", "user=\"alice\"", "wrong password"]);
    let (status, _) = w.token("nobody", "x", "repository:team/app:pull").await;
    assert_eq!(status, 401);
    w.log
        .wait_for(&["token refused", "user=\"nobody\"", "unknown user"]);
    let binds_before = w.slapd.log().matches("BIND dn=\"uid=alice").count();
    let (status, _) = w.token("alice", "", "repository:team/app:pull").await;
    assert_eq!(status, 401);
    w.log.wait_for(&["token refused", "user=\"alice\""]);
    assert_eq!(
        w.slapd.log().matches("BIND dn=\"uid=alice").count(),
        binds_before,
        "an empty password reached a bind"
    );
}

#[tokio::test]
async fn names_that_would_widen_a_filter_log_no_one_in_and_are_searched_escaped() {
    let w = start(Setup {
        groups: "from = \"none\"\n",
        ..Default::default()
    });
    for name in ["*", "admin)(uid=*", "a\\2a", "a\0b", "alice)(|(uid=*"] {
        let (status, body) = w.token(name, "alice-password", "repository:x/y:pull").await;
        assert_eq!(status, 401, "{name:?}: {body}");
    }
    // slapd logs filters normalized, escapes in upper-case hex.
    let user = |u: &str| format!("(&(objectClass=inetOrgPerson)(uid={u}))");
    for escaped in ["\\2A", "admin\\29\\28uid=\\2A", "a\\5C2a", "a\\00b"] {
        assert_eq!(
            w.slapd.searches_with_filter(&user(escaped)),
            1,
            "no escaped search for {escaped}:\n{}",
            w.slapd.log()
        );
    }
    assert!(
        !w.slapd.log().contains("(uid=*)"),
        "a search was widened:\n{}",
        w.slapd.log()
    );
}

#[tokio::test]
async fn groups_by_member_unique_member_and_member_uid_searches_and_a_nested_walk() {
    let base = format!("from = \"search\"\nbase = \"{}\"\n", tree::GROUPS);
    let (alice, bob, carol) = (&tree::ALICE, &tree::BOB, &tree::CAROL);
    // (the group search, who may push where, who may not)
    let cases = [
        // `member` with the nested walk: carol is in staff-ring, which is in
        // all-staff, which is in staff-ring again (a cycle); alice is in
        // developers, which is in all-staff.
        (
            format!("{base}filter = \"(member={{dn}})\"\nnested = \"walk\"\n"),
            vec![
                (carol, "staff-ring/app"),
                (carol, "all-staff/app"),
                (alice, "staff-ring/app"),
                (alice, "developers/app"),
            ],
            vec![(carol, "developers/app"), (carol, "admins/app")],
        ),
        (
            format!("{base}filter = \"(uniqueMember={{dn}})\"\n"),
            vec![(bob, "operators/app")],
            vec![(alice, "operators/app")],
        ),
        (
            format!("{base}filter = \"(memberUid={{username}})\"\n"),
            vec![(alice, "posix-users/app"), (bob, "posix-users/app")],
            vec![(carol, "posix-users/app"), (alice, "developers/app")],
        ),
        // A found group is named by its name attribute alone, not also by
        // its DN's RDN.
        (
            format!(
                "{base}filter = \"(memberUid={{username}})\"\nname_attribute = \"gidNumber\"\n"
            ),
            vec![(alice, "20000/app")],
            vec![(alice, "posix-users/app")],
        ),
    ];
    let mut slapd = Slapd::start_seeded(SlapdOptions::default());
    for (groups, may, may_not) in &cases {
        let setup = Setup {
            groups,
            policy: Some(GROUP_POLICY),
            ..Default::default()
        };
        let w = start_with(slapd, &setup);
        for (user, repository) in may {
            assert_eq!(w.actions(user, repository).await, PULL_PUSH, "{groups}");
        }
        for (user, repository) in may_not {
            assert!(w.actions(user, repository).await.is_empty(), "{groups}");
        }
        slapd = w.slapd;
    }
}

#[tokio::test]
async fn a_stopped_directory_is_unavailable_not_a_wrong_password_and_recovers() {
    let mut w = start(Setup {
        groups: "from = \"none\"\n",
        local: &[("local", "local-Pa55word")],
        ..Default::default()
    });
    assert_eq!(w.actions(&tree::ALICE, "alice/app").await, PULL_PUSH);
    // What asks the directory without a password: a refresh grant, and the
    // catalog, which filters by the caller's groups now.
    let (status, body) = w
        .post_token(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-password"),
            ("access_type", "offline"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    // (alice's: bob's password logins below must not find a cached one.)
    let (status, body) = w
        .token("alice", "alice-password", "registry:catalog:*")
        .await;
    assert_eq!(status, 200, "{body}");
    let catalog_token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(w.catalog(&catalog_token).await.0, 200);

    w.slapd.stop();
    let (status, body) = w.refresh(&refresh).await;
    assert_eq!(
        status, 503,
        "a refresh grant while the directory is down: {body}"
    );
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    let (status, body) = w.catalog(&catalog_token).await;
    assert_eq!(
        status, 503,
        "the catalog while the directory is down: {body}"
    );
    // More attempts than the limiter allows failures: none counts.
    for _ in 0..8 {
        let (status, body) = w
            .token("bob", "bob-password", "repository:bob/app:pull")
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
    w.log.wait_for(&["directory unreachable", "corp"]);
    assert_eq!(
        w.log.count("directory unreachable"),
        1,
        "logged more than once"
    );
    // Local users are unaffected.
    let (status, _) = w
        .token("local", "local-Pa55word", "repository:local/app:pull")
        .await;
    assert_eq!(status, 200);

    w.slapd.restart();
    assert_eq!(
        w.actions(&tree::BOB, "bob/app").await,
        PULL_PUSH,
        "the directory's users did not recover (or were locked out)"
    );
    w.log.wait_for(&["directory reachable again"]);
    // The refresh token outlived the outage.
    let (status, body) = w.refresh(&refresh).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.catalog(&catalog_token).await.0, 200);
}

#[tokio::test]
async fn the_configured_order_decides_between_a_local_and_a_directory_account() {
    // A local alice with another password: local first (the default).
    let local = [("alice", "local-alice-Pa55")];
    let w = start(Setup {
        groups: "from = \"none\"\n",
        local: &local,
        ..Default::default()
    });
    let (status, body) = w
        .token("alice", "local-alice-Pa55", "repository:alice/a:pull")
        .await;
    assert_eq!(status, 200, "{body}");
    // The local account decides: the directory's password is wrong here.
    let (status, _) = w
        .token("alice", "alice-password", "repository:alice/a:pull")
        .await;
    assert_eq!(status, 401);
    let World { slapd, .. } = w;

    let mut w = start_with(
        slapd,
        &Setup {
            groups: "from = \"none\"\n",
            order: Some("[\"corp\", \"file\"]"),
            local: &local,
            ..Default::default()
        },
    );
    let (status, _) = w
        .token("alice", "alice-password", "repository:alice/a:pull")
        .await;
    assert_eq!(status, 200);
    w.log.wait_for(&["token issued", "source=\"corp\""]);
    let (status, _) = w
        .token("alice", "local-alice-Pa55", "repository:alice/a:pull")
        .await;
    assert_eq!(status, 401, "the directory knows alice, so it decides");
}

#[tokio::test]
async fn a_user_removed_from_the_directory_loses_access_and_refresh_tokens_fail() {
    let w = start(member_of());
    assert_eq!(w.actions(&tree::BOB, "team/app").await, PULL_PUSH);
    // A refresh token for bob, as `docker login` gets one.
    let (status, body) = w
        .post_token(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "bob-password"),
            ("access_type", "offline"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    // Out of developers: team/ closes once the cached login expires (1 s).
    w.slapd.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        tree::group_dn(tree::DEVELOPERS),
        tree::BOB.dn()
    ));
    within_cache_lifetime("bob kept team/ access", async || {
        w.actions(&tree::BOB, "team/app").await.is_empty()
    })
    .await;
    // Deleted: logins and the refresh grant fail.
    w.slapd.delete(&tree::BOB.dn());
    within_cache_lifetime("deleted bob still logs in", async || {
        let login = w.token("bob", "bob-password", "repository:bob/app:pull");
        login.await.0 == 401
    })
    .await;
    let (status, body) = w.refresh(&refresh).await;
    assert_eq!(status, 401, "{body}");
}

/// Waits until `done` holds, as a directory change reaches logins once the
/// cached ones expire (`cache_secs = 1`): asked again every 200 ms, for at
/// most 10 s, else `what` fails the test.
async fn within_cache_lifetime(what: &str, done: impl AsyncFn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn ldaps_and_starttls_verify_the_directory_against_the_configured_ca() {
    let options = SlapdOptions {
        tls: true,
        ..Default::default()
    };
    let mut slapd = Some(Slapd::start_seeded(options));
    for transport in [Transport::Ldaps, Transport::StartTls] {
        let setup = Setup {
            groups: "from = \"none\"\n",
            transport,
            ..Default::default()
        };
        let w = start_with(slapd.take().unwrap(), &setup);
        assert_eq!(w.actions(&tree::ALICE, "alice/app").await, PULL_PUSH);
        slapd = Some(w.slapd);
    }
    // A CA that did not sign slapd's certificate: no connection, so the
    // directory's users get the unavailable answer.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = common::pki::TestCa::new(elsewhere.path(), "other");
    for transport in [Transport::Ldaps, Transport::StartTls] {
        let setup = Setup {
            groups: "from = \"none\"\n",
            transport,
            other_ca: Some(&other.cert),
            ..Default::default()
        };
        let mut w = start_with(slapd.take().unwrap(), &setup);
        let (status, body) = w
            .token("alice", "alice-password", "repository:alice/app:pull")
            .await;
        assert_eq!(status, 503, "{body}");
        w.log.wait_for(&["directory unreachable"]);
        slapd = Some(w.slapd);
    }
}

#[test]
fn skopeo_pushes_and_pulls_with_directory_credentials() {
    common::clients::require("skopeo");
    let w = start(Setup {
        groups: "from = \"none\"\n",
        ..Default::default()
    });
    let env = common::clients::ClientEnv::new(&w.server.host);
    let src = env.path("src");
    let layout = common::oci::write_layout(&src, "v1", &[10_000, 40_000]);
    let creds = format!("{}:{}", tree::ALICE.uid, tree::ALICE.password);
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("alice/app:v1"),
    ]);
    let back = env.path("back");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &env.docker_ref("alice/app:v1"),
        &common::oci::oci_ref(&back, "v1"),
    ]);
    assert_eq!(
        common::oci::layout_tag_digest(&back, "v1"),
        layout.manifest_digest
    );
    // The directory's wrong password is refused as skopeo reports it.
    let out = env.skopeo_fails(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wrong",
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("alice/app:v2"),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("401") || said.contains("unauthorized"),
        "{said}"
    );
}

/// `portcullis identity test USER --repo REPO` in the world's directory
/// (its ./portcullis.toml), the password on stdin.
fn identity_test(w: &World, user: &str, password: &str, repo: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["identity", "test", user, "--repo", repo])
        .current_dir(w.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn identity_test_says_which_source_answered_and_what_the_policy_grants() {
    let mut w = start(member_of());
    let (code, said) = identity_test(&w, "alice", tree::ALICE.password, "team/app");
    assert_eq!(code, Some(0), "{said}");
    for line in [
        "sources:  file, corp",
        "source:   corp",
        "user:     alice",
        "dn:       uid=alice,ou=people,dc=example,dc=org",
        "groups from: the user's `memberOf` attribute, prefixed `ldap:`",
        "groups:   ldap:admins, ldap:developers",
        "team/app: pull, push",
        "developers push in team/",
    ] {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
    let (code, said) = identity_test(&w, "alice", "wrong", "team/app");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("the password is wrong"), "{said}");
    let (code, said) = identity_test(&w, "nobody", "x", "team/app");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no source knows `nobody`"), "{said}");
    w.slapd.stop();
    let (code, said) = identity_test(&w, "alice", tree::ALICE.password, "team/app");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("login not checked"), "{said}");
}

#[test]
fn a_bind_dn_template_binds_directly_and_the_allow_list_filters_groups() {
    let template = format!("bind_dn_template = \"uid={{username}},{}\"\n", tree::PEOPLE);
    let w = start(Setup {
        ldap: &template,
        groups: "from = \"member_of\"\nprefix = \"ldap:\"\nallow = [\"developers\"]\n",
        ..member_of()
    });
    // alice is in admins too, which the allow list leaves out.
    let (code, said) = identity_test(&w, "alice", tree::ALICE.password, "team/app");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("groups:   ldap:developers\n"), "{said}");
    let (code, said) = identity_test(&w, "alice", "wrong", "team/app");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("the password is wrong"), "{said}");
    let (code, said) = identity_test(&w, "nobody", "x", "team/app");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no source knows `nobody`"), "{said}");
    // The name went into the DN escaped: `x,ou=admins` names no entry.
    let (code, _) = identity_test(&w, "x,ou=people", "x", "team/app");
    assert_eq!(code, Some(1));
    assert!(
        w.slapd
            .log()
            .contains("base=\"uid=x\\2Cou\\3Dpeople,ou=people,dc=example,dc=org\""),
        "{}",
        w.slapd.log()
    );
}

#[tokio::test]
async fn of_two_directories_the_first_that_knows_a_name_decides() {
    let lab = Slapd::start_seeded(SlapdOptions::default());
    // erin is only in the lab's directory; alice is in both, with another
    // password in the lab's.
    lab.add(&format!(
        "dn: {}\nobjectClass: inetOrgPerson\nuid: erin\ncn: erin\nsn: erin\nuserPassword: erin-password\n",
        tree::user_dn("erin")
    ));
    lab.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: lab-alice-password\n",
        tree::ALICE.dn()
    ));
    let mut w = start(Setup {
        groups: "from = \"none\"\n",
        second: Some(&lab),
        ..Default::default()
    });
    let (status, body) = w
        .token("erin", "erin-password", "repository:erin/app:pull")
        .await;
    assert_eq!(status, 200, "{body}");
    w.log
        .wait_for(&["token issued", "user=\"erin\"", "source=\"lab\""]);
    let (status, _) = w
        .token("alice", tree::ALICE.password, "repository:alice/app:pull")
        .await;
    assert_eq!(status, 200);
    w.log
        .wait_for(&["token issued", "user=\"alice\"", "source=\"corp\""]);
    // corp knows alice, so corp decides: the lab's password is wrong here.
    let (status, _) = w
        .token("alice", "lab-alice-password", "repository:alice/app:pull")
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_directory_that_stops_answering_is_cut_off_by_the_operation_timeout() {
    let w = start(Setup {
        ldap: "operation_timeout_secs = 1\nconnect_timeout_secs = 1\npool_size = 2\n",
        groups: "from = \"none\"\n",
        local: &[("local", "local-Pa55word")],
        ..Default::default()
    });
    assert_eq!(w.actions(&tree::ALICE, "alice/app").await, PULL_PUSH);
    // Frozen, not stopped: connections are accepted by the kernel and no
    // answer ever comes.
    let conf = w.slapd.dir().join("slapd.conf");
    let signal = |sig: &str| {
        let status = Command::new("pkill")
            .args([sig, "-f", conf.to_str().unwrap()])
            .status()
            .expect("run pkill");
        assert!(status.success(), "pkill {sig}");
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    // More logins at once than the pool bound: every one is answered, as
    // unavailable or, past the limiter's bound on attempts in flight from
    // one address, as "being checked, retry" (never as a failed login).
    let logins = (0..6).map(|_| w.token("bob", "bob-password", "repository:bob/app:pull"));
    let answers = futures_util::future::join_all(logins).await;
    for (status, body) in &answers {
        let code = body["errors"][0]["code"].as_str().unwrap_or("");
        assert!(
            (*status, code) == (503, "UNAVAILABLE") || (*status, code) == (429, "TOOMANYREQUESTS"),
            "{status} {body}"
        );
        assert!(!body.to_string().contains("failed logins"), "{body}");
    }
    assert!(answers.iter().any(|(status, _)| *status == 503));
    let took = started.elapsed();
    // Local users do not wait for the directory.
    let local = std::time::Instant::now();
    let (status, _) = w
        .token("local", "local-Pa55word", "repository:local/app:pull")
        .await;
    assert_eq!(status, 200);
    let local = local.elapsed();
    signal("-CONT");
    assert!(
        took < std::time::Duration::from_secs(15),
        "a frozen directory held logins for {took:?}"
    );
    assert!(
        local < std::time::Duration::from_secs(5),
        "a local login waited {local:?} for the directory"
    );
    assert_eq!(w.actions(&tree::BOB, "bob/app").await, PULL_PUSH);
}

#[test]
fn policy_explain_resolves_a_directory_users_groups_without_a_password() {
    let w = start(member_of());
    let explain = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["policy", "explain"])
            .args(args)
            .current_dir(w.dir.path())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let (code, said) = explain(&["--user", "bob", "--resolve", "team/app", "push"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("bob (groups: ldap:developers)"), "{said}");
    assert!(said.contains("resolved by `corp`"), "{said}");
    // Without --resolve the groups are only those given: none.
    let (code, said) = explain(&["--user", "bob", "team/app", "push"]);
    assert_eq!(code, Some(1), "{said}");
    let (code, said) = explain(&["--user", "nobody", "--resolve", "team/app", "push"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no identity source knows `nobody`"), "{said}");
}

#[tokio::test]
async fn a_user_filter_that_matches_several_entries_logs_no_one_in() {
    let mut w = start(Setup {
        groups: "from = \"none\"\n",
        user_filter: Some("(|(uid={username})(objectClass=inetOrgPerson))"),
        ..Default::default()
    });
    let (status, body) = w
        .token("alice", tree::ALICE.password, "repository:alice/app:pull")
        .await;
    assert_eq!(status, 401, "{body}");
    w.log
        .wait_for(&["user search matched several entries", "alice"]);
}
