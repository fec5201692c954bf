//! Real registry clients against the real binary with authentication on:
//! podman and skopeo log in through Portcullis' token server, push and pull
//! where the policy allows, and are refused (with nothing stored) where it
//! does not.
//!
//! Every test writes its own users file, policy files and configuration into
//! a temporary directory and starts `portcullis serve --config …` on an
//! ephemeral port. Like `tests/clients.rs`, these tests never skip: a missing
//! client is a failure that says how to install it.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::clients::{ClientEnv, require, stderr_of, stdout_json};
use common::oci::{layout_blobs, layout_tag_digest, oci_ref, write_layout};
use common::process::ServerProcess;
use portcullis::auth::users::hash_password;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Two uncompressed tar layers of random data: a small one and one over a
/// MiB.
const LAYER_SIZES: &[usize] = &[70_000, 1_500_000];

/// The service name of the default configuration (`[token] service`).
const SERVICE: &str = "portcullis";

// ---------------------------------------------------------------------------
// Server with users and policies
// ---------------------------------------------------------------------------

/// A user written to the users file: name, password, groups.
struct User {
    name: &'static str,
    password: &'static str,
    groups: &'static [&'static str],
}

const ALICE: User = User {
    name: "alice",
    password: "alice-secret-1",
    groups: &[],
};
const BOB: User = User {
    name: "bob",
    password: "bob-secret-2",
    groups: &[],
};
/// Pulls everything, pushes nothing (see [`TEST_POLICY`]).
const READER: User = User {
    name: "reader",
    password: "reader-secret-3",
    groups: &[],
};
const ROOT: User = User {
    name: "root",
    password: "root-secret-4",
    groups: &["admins"],
};

impl User {
    fn creds(&self) -> String {
        format!("{}:{}", self.name, self.password)
    }
}

/// The policy most tests run under, in two files so that the file-name
/// order is part of what is exercised: admins may do anything; anonymous
/// callers pull `public/**`; `reader` pulls everything and pushes nothing;
/// `private/**` is for admins (and `reader`) only; every user pulls and
/// pushes (but does not delete) in their own namespace and pulls everything
/// else. Only admins see the catalog.
const TEST_POLICY: &[(&str, &str)] = &[
    (
        "10-admins.toml",
        r#"
[[rule]]
description = "administrators"
groups = ["admins"]
repositories = ["**"]
actions = ["*"]
catalog = true
"#,
    ),
    (
        "20-everyone.toml",
        r#"
[[rule]]
description = "anonymous pulls of public images"
anonymous = true
repositories = ["public/**"]
actions = ["pull"]

[[rule]]
description = "a read-only account"
users = ["reader"]
repositories = ["**"]
actions = ["pull"]

[[rule]]
description = "private repositories: administrators only"
users = ["*"]
repositories = ["private/**"]
actions = []

[[rule]]
description = "own namespace, without delete"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]

[[rule]]
description = "users pull everything"
users = ["*"]
repositories = ["**"]
actions = ["pull"]
"#,
    ),
];

/// A Portcullis process with authentication on, and the directory holding
/// its configuration, users, policies, keys and storage.
struct AuthServer {
    server: ServerProcess,
    _dir: TempDir,
}

impl AuthServer {
    /// Starts a server over `users` and the given policy files.
    fn start(users: &[&User], policies: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policies");
        fs::create_dir_all(&policy_dir).unwrap();
        for (name, text) in policies {
            fs::write(policy_dir.join(name), text).unwrap();
        }
        Self::start_in(dir, users)
    }

    /// Starts a server over `users` and a copy of the repository's own
    /// `policies/` directory, the policy a new installation starts with.
    fn start_with_default_policies(users: &[&User]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        common::process::copy_project_policies(dir.path());
        Self::start_in(dir, users)
    }

    fn start_in(dir: TempDir, users: &[&User]) -> Self {
        let root = dir.path();
        let mut users_toml = String::new();
        for user in users {
            let hash = hash_password(user.password).expect("hash password");
            let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
            users_toml.push_str(&format!(
                "[users.{}]\npassword = \"{hash}\"\ngroups = [{}]\n\n",
                user.name,
                groups.join(", ")
            ));
        }
        fs::write(root.join("users.toml"), users_toml).unwrap();
        // Literal TOML strings: a temporary path holds no `'`.
        let config = format!(
            "[storage]\nroot = '{}'\n\n[token]\nkey_dir = '{}'\n\n\
             [users]\nfile = '{}'\n\n[policy]\ndir = '{}'\n",
            root.join("data").display(),
            root.join("certs").display(),
            root.join("users.toml").display(),
            root.join("policies").display(),
        );
        let config_path = root.join("portcullis.toml");
        fs::write(&config_path, config).unwrap();
        let server = ServerProcess::start_with(&["--config", config_path.to_str().unwrap()]);
        Self { server, _dir: dir }
    }

    fn host(&self) -> &str {
        &self.server.host
    }

    /// An access token for `user` (anonymous when `None`) and `scopes`,
    /// fetched with curl from `/token`.
    fn token(&self, user: Option<&User>, scopes: &[&str]) -> String {
        let mut query = format!("service={SERVICE}");
        for scope in scopes {
            query.push_str(&format!("&scope={scope}"));
        }
        let url = self.server.at(&format!("/token?{query}"));
        let mut args = vec![];
        let creds;
        if let Some(user) = user {
            creds = user.creds();
            args.extend(["-u", creds.as_str()]);
        }
        args.push(&url);
        let response = curl(&args);
        assert_eq!(response.status, 200, "token request: {}", response.body);
        let body: Value = serde_json::from_str(&response.body).expect("token JSON");
        body["token"].as_str().expect("token field").to_owned()
    }

    /// GET `path` with a bearer token, through curl.
    fn get(&self, token: &str, path: &str) -> HttpResponse {
        self.request(token, &[], path)
    }

    /// A request with a bearer token and extra curl options (method, body).
    fn request(&self, token: &str, options: &[&str], path: &str) -> HttpResponse {
        let auth = format!("Authorization: Bearer {token}");
        let url = self.server.at(path);
        let mut args = vec!["-H", auth.as_str()];
        args.extend_from_slice(options);
        args.push(&url);
        curl(&args)
    }

    /// The catalog as an administrator sees it.
    fn catalog_as_admin(&self) -> Vec<String> {
        let token = self.token(Some(&ROOT), &["registry:catalog:*"]);
        let response = self.get(&token, "/v2/_catalog");
        assert_eq!(response.status, 200, "admin catalog: {}", response.body);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        body["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    /// Tags of `repo` as an administrator sees them; `None` when the
    /// repository does not exist.
    fn tags_as_admin(&self, repo: &str) -> Option<Vec<String>> {
        let token = self.token(Some(&ROOT), &[&format!("repository:{repo}:pull")]);
        let response = self.get(&token, &format!("/v2/{repo}/tags/list"));
        match response.status {
            200 => {
                let body: Value = serde_json::from_str(&response.body).unwrap();
                Some(
                    body["tags"]
                        .as_array()
                        .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
                        .unwrap_or_default(),
                )
            }
            404 => None,
            other => panic!("admin tags/list of {repo}: {other} {}", response.body),
        }
    }
}

struct HttpResponse {
    status: u16,
    /// Header lines of the final response, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl (a real HTTP client, as an operator would use) and splits its
/// `--include` output into status, headers and body.
fn curl(args: &[&str]) -> HttpResponse {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--include", "--globoff"])
        .args(args)
        .output()
        .expect("cannot run curl (these tests use it to query the API)");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in curl output: {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Client refusals
// ---------------------------------------------------------------------------

/// A catalog request refused as the spec says: 401 `UNAUTHORIZED`, with a
/// challenge that asks for `registry:catalog:*` and contains `also`.
#[track_caller]
fn assert_catalog_refused(response: &HttpResponse, also: &str) {
    assert_eq!(response.status, 401, "{}", response.body);
    let challenge = response.header("www-authenticate").expect("challenge");
    assert!(
        challenge.contains("scope=\"registry:catalog:*\"") && challenge.contains(also),
        "challenge: {challenge}"
    );
    let body: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
}

/// Asserts that a client's error output says it was refused for lack of
/// authorization (rather than, say, a network error or a missing image), and
/// prints it: what clients show on denial is worth seeing in a test log.
fn assert_refused(what: &str, out: &Output) {
    let stderr = stderr_of(out);
    eprintln!("--- {what}:\n{}", stderr.trim_end());
    let lower = stderr.to_ascii_lowercase();
    assert!(
        [
            "unauthorized",
            "denied",
            "not authorized",
            "authentication required",
            "invalid username/password",
        ]
        .iter()
        .any(|word| lower.contains(word)),
        "{what}: the error does not say access was refused:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Pushing a layout
// ---------------------------------------------------------------------------

/// `skopeo copy` of a local layout to the registry as `user`, keeping the
/// layers' digests.
fn push_layout(env: &ClientEnv, src: &Path, user: &User, repo_tag: &str) {
    let creds = user.creds();
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &oci_ref(src, "v1"),
        &env.docker_ref(repo_tag),
    ]);
}

// ---------------------------------------------------------------------------
// Login and logout
// ---------------------------------------------------------------------------

#[test]
fn podman_and_skopeo_login_accept_good_credentials_and_refuse_bad_ones() {
    require("podman");
    require("skopeo");
    for program in ["podman", "skopeo"] {
        // A server per client: the failed logins of one client count
        // nowhere near the other's (failed logins are rate-limited).
        let server = AuthServer::start(&[&ALICE, &BOB], TEST_POLICY);
        let env = ClientEnv::new(server.host());

        // A wrong password and an unknown user are refused, and nothing is
        // written to the auth file.
        let wrong = env
            .login(program, ALICE.name, "not-her-password")
            .expect_err("login with a wrong password succeeded");
        assert_refused(&format!("{program} login, wrong password"), &wrong);
        let unknown = env
            .login(program, "mallory", "whatever")
            .expect_err("login of an unknown user succeeded");
        assert_refused(&format!("{program} login, unknown user"), &unknown);
        // Another user's password does not open this account either.
        env.login(program, ALICE.name, BOB.password)
            .expect_err("login with another user's password succeeded");
        assert_eq!(
            env.stored_credentials(),
            None,
            "{program}: bad login stored"
        );

        // The right password logs in and is stored for this registry.
        let ok = env
            .login(program, ALICE.name, ALICE.password)
            .unwrap_or_else(|out| panic!("{program} login failed: {}", stderr_of(&out)));
        assert!(
            String::from_utf8_lossy(&ok.stdout).contains("Login Succeeded"),
            "{program} login output: {}",
            String::from_utf8_lossy(&ok.stdout)
        );
        assert_eq!(env.stored_credentials(), Some(ALICE.creds()));

        // A failed login over a stored one leaves the stored one alone:
        // the client checks before it writes.
        env.login(program, BOB.name, "wrong")
            .expect_err("login with a wrong password succeeded");
        assert_eq!(env.stored_credentials(), Some(ALICE.creds()));

        // Logout removes the credentials.
        let auth_file = env.auth_file();
        let logout = [
            "logout",
            "--authfile",
            auth_file.to_str().unwrap(),
            server.host(),
        ];
        match program {
            "podman" => env.podman(&logout),
            _ => env.skopeo(&logout),
        };
        assert_eq!(
            env.stored_credentials(),
            None,
            "{program}: logout kept credentials"
        );
    }
}

// ---------------------------------------------------------------------------
// Allowed pushes and pulls
// ---------------------------------------------------------------------------

#[test]
fn skopeo_copy_to_own_namespace_round_trips_every_digest() {
    require("skopeo");
    let server = AuthServer::start(&[&ALICE, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);

    // Push with credentials given on the command line…
    push_layout(&env, &src, &ALICE, "alice/app:v1");

    // …and pull back with credentials from a login, as a user would.
    env.login("skopeo", ALICE.name, ALICE.password)
        .unwrap_or_else(|out| panic!("skopeo login failed: {}", stderr_of(&out)));
    let back = env.path("back");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &env.docker_ref("alice/app:v1"),
        &oci_ref(&back, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);
    assert_eq!(layout_blobs(&back), layout.blobs);

    let inspect = stdout_json(&env.skopeo(&[
        "inspect",
        "--tls-verify=false",
        &env.docker_ref("alice/app:v1"),
    ]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());

    // The registry holds exactly what was pushed, as an admin sees it.
    assert_eq!(server.tags_as_admin("alice/app"), Some(vec!["v1".into()]));
}

#[test]
fn podman_push_and_pull_in_own_namespace_after_login() {
    require("podman");
    let server = AuthServer::start(&[&ALICE, &BOB, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);

    // podman needs the image in its own storage first; the layout's path
    // is given relative (podman names the image after it, and a temporary
    // directory's name is not lowercase).
    let pulled = env.podman(&["pull", "--quiet", "oci:src:v1"]);
    let image_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    assert_eq!(format!("sha256:{image_id}"), layout.config_digest);

    env.login("podman", ALICE.name, ALICE.password)
        .unwrap_or_else(|out| panic!("podman login failed: {}", stderr_of(&out)));
    let remote = format!("{}/alice/web:v1", server.host());
    let digest_file = env.path("pushed.digest");
    env.podman(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &image_id,
        &format!("docker://{remote}"),
    ]);
    let pushed = fs::read_to_string(&digest_file).unwrap().trim().to_owned();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");

    env.podman(&["rmi", "--force", &image_id]);
    let pulled = env.podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    let pulled_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    assert_eq!(pulled_id, image_id, "image id after pull from the registry");
    let inspect = stdout_json(&env.podman(&["image", "inspect", &remote]));
    assert_eq!(inspect[0]["Digest"], pushed.as_str());

    // Another user pulls it too (users pull everything), with their own
    // login, into a fresh image store.
    let bob_env = ClientEnv::new(server.host());
    bob_env
        .login("podman", BOB.name, BOB.password)
        .unwrap_or_else(|out| panic!("podman login failed: {}", stderr_of(&out)));
    let pulled = bob_env.podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    assert_eq!(
        String::from_utf8(pulled.stdout).unwrap().trim(),
        image_id,
        "bob's pull"
    );
}

// ---------------------------------------------------------------------------
// Denials
// ---------------------------------------------------------------------------

#[test]
fn push_into_another_users_namespace_is_refused_and_stores_nothing() {
    require("skopeo");
    require("podman");
    let server = AuthServer::start(&[&ALICE, &BOB, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    let alice = ALICE.creds();

    let out = env.skopeo_fails(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &alice,
        &oci_ref(&src, "v1"),
        &env.docker_ref("bob/app:v1"),
    ]);
    assert_refused("skopeo copy as alice to bob/app", &out);

    // The same with podman, logged in as alice.
    let pulled = env.podman(&["pull", "--quiet", "oci:src:v1"]);
    let image_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    env.login("podman", ALICE.name, ALICE.password)
        .unwrap_or_else(|out| panic!("podman login failed: {}", stderr_of(&out)));
    let out = env.podman_fails(&[
        "push",
        "--tls-verify=false",
        &image_id,
        &format!("docker://{}/bob/app:v1", server.host()),
    ]);
    assert_refused("podman push as alice to bob/app", &out);

    // Nothing reached the registry: no repository, no tag, no blob.
    assert_eq!(server.tags_as_admin("bob/app"), None);
    assert!(
        !server.catalog_as_admin().iter().any(|r| r == "bob/app"),
        "bob/app in the catalog"
    );
    let token = server.token(Some(&ROOT), &["repository:bob/app:pull"]);
    for digest in layout.layer_digests.iter().chain([&layout.config_digest]) {
        let response = server.get(&token, &format!("/v2/bob/app/blobs/{digest}"));
        assert_eq!(response.status, 404, "blob {digest} stored in bob/app");
    }

    // Bob himself may push there: the refusal was about alice.
    push_layout(&env, &src, &BOB, "bob/app:v1");
    assert_eq!(server.tags_as_admin("bob/app"), Some(vec!["v1".into()]));
}

#[test]
fn pull_only_user_cannot_push_and_delete_needs_delete_permission() {
    require("skopeo");
    let server = AuthServer::start(&[&ALICE, &READER, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    push_layout(&env, &src, &ALICE, "alice/app:v1");

    // reader pulls alice/app…
    let reader = READER.creds();
    let inspect = stdout_json(&env.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &reader,
        &env.docker_ref("alice/app:v1"),
    ]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());

    // …but pushes nowhere, not even into a namespace named after them
    // (their rule comes first and grants only pull).
    for target in ["alice/app:v2", "reader/app:v1"] {
        let out = env.skopeo_fails(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &reader,
            &oci_ref(&src, "v1"),
            &env.docker_ref(target),
        ]);
        assert_refused(
            &format!("skopeo copy as pull-only reader to {target}"),
            &out,
        );
    }
    assert_eq!(server.tags_as_admin("alice/app"), Some(vec!["v1".into()]));
    assert_eq!(server.tags_as_admin("reader/app"), None);

    // Deleting needs `delete`, which alice lacks even in her own namespace.
    let alice = ALICE.creds();
    let out = env.skopeo_fails(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("alice/app:v1"),
    ]);
    assert_refused("skopeo delete as alice (no delete permission)", &out);
    let inspect = stdout_json(&env.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("alice/app:v1"),
    ]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());

    // An admin may delete; the manifest is then gone.
    let root = ROOT.creds();
    env.skopeo(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &root,
        &env.docker_ref("alice/app:v1"),
    ]);
    let out = env.skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("alice/app:v1"),
    ]);
    let stderr = stderr_of(&out).to_ascii_lowercase();
    assert!(
        stderr.contains("manifest unknown") || stderr.contains("not found"),
        "inspect after delete: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// Anonymous access
// ---------------------------------------------------------------------------

#[test]
fn anonymous_pull_works_only_where_the_policy_allows_it() {
    require("skopeo");
    require("podman");
    let server = AuthServer::start(&[&ALICE, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    push_layout(&env, &src, &ROOT, "public/x:v1");
    push_layout(&env, &src, &ALICE, "alice/app:v1");

    // No credentials anywhere: the auth file is empty and --no-creds says so.
    let inspect = stdout_json(&env.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &env.docker_ref("public/x:v1"),
    ]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());
    let out = env.skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &env.docker_ref("alice/app:v1"),
    ]);
    assert_refused("anonymous skopeo inspect of alice/app", &out);

    // Anonymous pull may not push, even where it may pull.
    let out = env.skopeo_fails(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &oci_ref(&src, "v1"),
        &env.docker_ref("public/x:v2"),
    ]);
    assert_refused("anonymous skopeo copy to public/x", &out);
    assert_eq!(server.tags_as_admin("public/x"), Some(vec!["v1".into()]));

    // podman, never logged in, pulls the public image and not the other.
    let pulled = env.podman(&[
        "pull",
        "--quiet",
        "--tls-verify=false",
        &format!("{}/public/x:v1", server.host()),
    ]);
    assert_eq!(
        format!(
            "sha256:{}",
            String::from_utf8(pulled.stdout).unwrap().trim()
        ),
        layout.config_digest
    );
    let out = env.podman_fails(&[
        "pull",
        "--tls-verify=false",
        &format!("{}/alice/app:v1", server.host()),
    ]);
    assert_refused("anonymous podman pull of alice/app", &out);
}

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

#[test]
fn list_tags_as_user_and_catalog_for_admins_only() {
    require("skopeo");
    require("curl");
    let server = AuthServer::start(&[&ALICE, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    write_layout(&src, "v1", LAYER_SIZES);
    push_layout(&env, &src, &ALICE, "alice/app:v1");
    push_layout(&env, &src, &ALICE, "alice/app:v2");
    push_layout(&env, &src, &ROOT, "public/x:v1");

    let alice = ALICE.creds();
    let tags = stdout_json(&env.skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("alice/app"),
    ]));
    assert_eq!(tags["Tags"], json!(["v1", "v2"]));
    // Anonymous callers may not list a private repository's tags.
    let out = env.skopeo_fails(&[
        "list-tags",
        "--tls-verify=false",
        "--no-creds",
        &env.docker_ref("alice/app"),
    ]);
    assert_refused("anonymous skopeo list-tags of alice/app", &out);

    // The catalog: everything for an admin…
    assert_eq!(server.catalog_as_admin(), vec!["alice/app", "public/x"]);

    // …and a 401 for alice, whose token carries no catalog access (the
    // token server grants what the policy allows and leaves the rest out).
    let token = server.token(Some(&ALICE), &["registry:catalog:*"]);
    let response = server.get(&token, "/v2/_catalog");
    eprintln!(
        "--- catalog with alice's token: {} {}\n{}",
        response.status,
        response.header("www-authenticate").unwrap_or_default(),
        response.body.trim_end()
    );
    assert_catalog_refused(&response, "error=\"insufficient_scope\"");
    // Without any token, the same refusal asks for authentication.
    let response = curl(&[&server.server.at("/v2/_catalog")]);
    assert_eq!(response.status, 401);
}

// ---------------------------------------------------------------------------
// The policy shipped in the repository
// ---------------------------------------------------------------------------

#[test]
fn shipped_default_policy_admins_all_users_own_namespace_anonymous_nothing() {
    require("skopeo");
    let server = AuthServer::start_with_default_policies(&[&ALICE, &BOB, &ROOT]);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);

    // Users push into their own namespace, at any depth…
    push_layout(&env, &src, &ALICE, "alice/app:v1");
    push_layout(&env, &src, &ALICE, "alice/tools/deep:v1");
    // …and pull everything, including others' namespaces.
    let bob = BOB.creds();
    let inspect = stdout_json(&env.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &bob,
        &env.docker_ref("alice/app:v1"),
    ]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());

    // Outside their namespace they may not push: not into bob's, not at the
    // top level, not into a name that merely starts with theirs.
    let alice = ALICE.creds();
    for target in ["bob/app:v1", "app:v1", "alice-x/app:v1"] {
        let out = env.skopeo_fails(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &alice,
            &oci_ref(&src, "v1"),
            &env.docker_ref(target),
        ]);
        assert_refused(&format!("default policy: alice copies to {target}"), &out);
    }
    // Users delete in their own namespace (the owner cleans up after CI)…
    push_layout(&env, &src, &ALICE, "alice/ci/build:v1");
    env.skopeo(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("alice/ci/build:v1"),
    ]);
    assert_eq!(server.tags_as_admin("alice/ci/build"), Some(vec![]));
    // …and nowhere else.
    let out = env.skopeo_fails(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &bob,
        &env.docker_ref("alice/app:v1"),
    ]);
    assert_refused("default policy: bob deletes alice's tag", &out);

    // Anonymous callers get nothing.
    let out = env.skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &env.docker_ref("alice/app:v1"),
    ]);
    assert_refused("default policy: anonymous inspect", &out);

    // Admins push anywhere and delete.
    push_layout(&env, &src, &ROOT, "app:v1");
    let root = ROOT.creds();
    env.skopeo(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &root,
        &env.docker_ref("alice/tools/deep:v1"),
    ]);

    let catalog = server.catalog_as_admin();
    assert!(catalog.iter().any(|r| r == "app"), "catalog: {catalog:?}");
    assert!(
        !catalog
            .iter()
            .any(|r| r.starts_with("bob") || r.starts_with("alice-x")),
        "a refused push created a repository: {catalog:?}"
    );
    assert_eq!(server.tags_as_admin("alice-x/app"), None);
    assert_eq!(server.tags_as_admin("alice/app"), Some(vec!["v1".into()]));
}

/// `podman search HOST/` lists the registry's catalog (`GET /v2/_catalog`,
/// whose challenge asks for `registry:catalog:*`). With the shipped policy a
/// user who is not an administrator now gets what they may pull, rather
/// than podman's misleading "invalid username/password"; an anonymous
/// caller still gets a 401 with a challenge.
#[test]
fn podman_search_as_a_user_lists_what_they_may_pull_and_anonymous_is_refused() {
    require("podman");
    require("skopeo");
    require("curl");
    let server = AuthServer::start_with_default_policies(&[&ALICE, &BOB]);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    write_layout(&src, "v1", &LAYER_SIZES[..1]);
    push_layout(&env, &src, &ALICE, "alice/app:v1");
    push_layout(&env, &src, &BOB, "bob/tools/lint:v1");

    env.login("podman", ALICE.name, ALICE.password)
        .unwrap_or_else(|out| panic!("podman login failed: {}", stderr_of(&out)));
    let search = |env: &ClientEnv| {
        env.podman_cmd(&[
            "search",
            "--tls-verify=false",
            "--format",
            "{{.Name}}",
            &format!("{}/", server.host()),
        ])
    };
    let out = common::clients::succeed(search(&env), None);
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    listed.sort();
    let host = server.host();
    assert_eq!(
        listed,
        [
            format!("{host}/alice/app"),
            format!("{host}/bob/tools/lint")
        ]
    );

    // Never logged in: refused, and the registry asked for authentication.
    let anonymous = ClientEnv::new(server.host());
    let out = common::clients::fail(search(&anonymous), None);
    assert_refused("anonymous podman search", &out);
    let response = curl(&[&server.server.at("/v2/_catalog")]);
    assert_catalog_refused(&response, "Bearer realm=");
}

// ---------------------------------------------------------------------------
// Cross-repository mounts
// ---------------------------------------------------------------------------

#[test]
fn mount_from_a_repository_the_user_may_not_pull_is_refused_and_push_falls_back() {
    require("skopeo");
    require("curl");
    let server = AuthServer::start(&[&ALICE, &ROOT], TEST_POLICY);
    let env = ClientEnv::new(server.host());
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    push_layout(&env, &src, &ROOT, "private/secret:v1");

    let alice = ALICE.creds();
    let out = env.skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &alice,
        &env.docker_ref("private/secret:v1"),
    ]);
    assert_refused("skopeo inspect as alice of private/secret", &out);

    // Mounting a layer of private/secret into her own repository would
    // hand alice a blob she may not pull: the token server leaves
    // private/secret out of her token, and the mount is refused before
    // anything is linked.
    let token = server.token(
        Some(&ALICE),
        &[
            "repository:alice/app:pull,push",
            "repository:private/secret:pull",
        ],
    );
    let layer = &layout.layer_digests[0];
    let response = server.request(
        &token,
        &["-X", "POST", "--data", ""],
        &format!("/v2/alice/app/blobs/uploads/?mount={layer}&from=private/secret"),
    );
    assert_eq!(response.status, 401, "mount: {}", response.body);
    let challenge = response.header("www-authenticate").expect("challenge");
    assert!(
        challenge.contains("repository:private/secret:pull")
            && challenge.contains("error=\"insufficient_scope\""),
        "challenge: {challenge}"
    );
    let response = server.request(&token, &["--head"], &format!("/v2/alice/app/blobs/{layer}"));
    assert_eq!(
        response.status, 404,
        "blob linked into alice/app by a refused mount"
    );

    // skopeo remembers that these blobs live in private/secret on this
    // registry and asks there first (a HEAD, which needs pull on
    // private/secret, before any mount); refused, it uploads them instead,
    // and alice's push succeeds with the same digests.
    push_layout(&env, &src, &ALICE, "alice/app:v1");
    let back = env.path("back");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &alice,
        &env.docker_ref("alice/app:v1"),
        &oci_ref(&back, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);
    assert_eq!(layout_blobs(&back), layout.blobs);
}
