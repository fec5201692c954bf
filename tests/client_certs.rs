//! TLS client certificates as credentials (`server.tls.client_ca`): the real
//! binary over TLS, with curl and skopeo presenting certificates from test
//! CAs. A certificate stands for the account its subject's CN names, with
//! that account's groups; a certificate that names no one, comes from
//! another CA or has expired gets nothing, and `client_auth = "required"`
//! refuses connections without one.
use crate::common;

use std::fs;

use common::clients::{ClientEnv, require};
use common::oci::{oci_ref, write_layout};
use common::pki::{ClientPair, TestCa, Validity};
use common::process::{ServerProcess, run_in};
use serde_json::Value;

use crate::logs::Log;
use crate::tls::{curl, keygen_tls_for, replace};

/// A server over TLS in its own directory: the project's policies, the
/// users alice and bob, a server pair in `tls/`, client certificates from
/// `clients` CA, with `client_auth` as given.
struct Setup {
    dir: tempfile::TempDir,
    server: ServerProcess,
    log: Log,
    /// The server's certificate, its own CA.
    server_ca: String,
    clients: TestCa,
}

const BOB_PASSWORD: &str = "bob-Pa55word-for-certs";

fn start(client_auth: &str) -> Setup {
    let dir = crate::logs::setup();
    run_in(
        dir.path(),
        &["user", "add", "bob"],
        &format!("{BOB_PASSWORD}\n"),
    );
    let server_ca = keygen_tls_for(&dir.path().join("tls"), &[], false);
    let clients = TestCa::new(&dir.path().join("pki"), "clients");
    fs::write(
        dir.path().join("portcullis.toml"),
        format!(
            "[server.tls]\ncert = \"tls/tls.crt\"\nkey = \"tls/tls.key\"\n\
             client_ca = \"pki/clients-ca.crt\"\nclient_auth = \"{client_auth}\"\n\
             [storage]\nroot = \"data\"\n"
        ),
    )
    .unwrap();
    let (server, log) = crate::tls::serve(dir.path(), &[]);
    Setup {
        server_ca: server_ca.to_str().unwrap().to_owned(),
        dir,
        server,
        log,
        clients,
    }
}

impl Setup {
    fn token_url(&self, query: &str) -> String {
        format!("{}/token?service=portcullis&{query}", self.server.url)
    }

    /// `curl` trusting the server, presenting `pair` if given, with `args`.
    fn curl(&self, pair: Option<&ClientPair>, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--cacert", &self.server_ca];
        if let Some(pair) = pair {
            all.extend(["--cert", pair.cert.to_str().unwrap()]);
            all.extend(["--key", pair.key.to_str().unwrap()]);
        }
        all.extend(args);
        curl(&all)
    }

    /// A token request's status and body.
    fn token(&self, pair: Option<&ClientPair>, query: &str, extra: &[&str]) -> (u16, Value) {
        let url = self.token_url(query);
        let out = self.curl(
            pair,
            &[&["-w", "\n%{http_code}"], extra, &[url.as_str()]].concat(),
        );
        assert!(out.status.success(), "curl: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), serde_json::from_str(body).unwrap())
    }
}

const PUSH_ALICE: &str = "scope=repository:alice/app:pull,push";

#[test]
fn a_client_certificate_gets_a_token_for_the_account_its_cn_names() {
    let mut s = start("optional");
    let alice = s.clients.issue("alice", Some("alice"), Validity::Current);
    let (status, body) = s.token(
        Some(&alice),
        &format!("{PUSH_ALICE}&offline_token=true"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let c = common::token_claims(&body);
    assert_eq!(c["sub"], "alice");
    assert_eq!(common::granted_actions(&c, "alice/app"), ["pull", "push"]);
    // The certificate is the credential each time: no refresh token that
    // would outlive it.
    assert!(body.get("refresh_token").is_none(), "{body}");
    let line = s.log.wait_for(&["token issued", "grant=\"certificate\""]);
    assert!(line.contains("user=\"alice\""), "{line}");
    assert!(line.contains("source=\"file\""), "{line}");
    assert!(line.contains("CN=alice"), "{line}");

    // Credentials in the request come first: bob's password over alice's
    // certificate is bob.
    let bob = format!("bob:{BOB_PASSWORD}");
    let (status, body) = s.token(Some(&alice), PUSH_ALICE, &["-u", &bob]);
    assert_eq!(status, 200, "{body}");
    let c = common::token_claims(&body);
    assert_eq!(c["sub"], "bob");
    assert!(
        !common::granted_actions(&c, "alice/app").contains(&"push".to_owned()),
        "{c}"
    );

    // Without a certificate (optional): anonymous, nothing granted.
    let (status, body) = s.token(None, PUSH_ALICE, &[]);
    assert_eq!(status, 200, "{body}");
    let c = common::token_claims(&body);
    assert_eq!(c["sub"], "");
    assert!(common::granted_actions(&c, "alice/app").is_empty(), "{c}");

    // An `account` other than the certificate's is refused.
    let (status, _) = s.token(Some(&alice), &format!("{PUSH_ALICE}&account=bob"), &[]);
    assert_eq!(status, 400);
}

#[test]
fn certificates_that_name_no_one_are_refused_not_served_as_anonymous() {
    let mut s = start("optional");
    let mallory = s
        .clients
        .issue("mallory", Some("mallory"), Validity::Current);
    let (status, body) = s.token(Some(&mallory), PUSH_ALICE, &[]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    assert!(body.get("token").is_none());
    let line = s.log.wait_for(&["token refused", "mallory"]);
    assert!(
        line.contains("client certificate names an unknown user"),
        "{line}"
    );

    let nameless = s.clients.issue("nameless", None, Validity::Current);
    let (status, _) = s.token(Some(&nameless), PUSH_ALICE, &[]);
    assert_eq!(status, 401);
    s.log.wait_for(&[
        "token refused",
        "client certificate subject has no common name",
    ]);
}

#[test]
fn certificates_from_another_ca_or_expired_fail_the_handshake() {
    let s = start("optional");
    let elsewhere = TestCa::new(&s.dir.path().join("other"), "other");
    let forged = elsewhere.issue("alice-forged", Some("alice"), Validity::Current);
    let expired = s
        .clients
        .issue("alice-old", Some("alice"), Validity::Expired);
    let url = s.token_url(PUSH_ALICE);
    for (what, pair) in [("another CA", &forged), ("expired", &expired)] {
        assert_no_answer(&s.curl(Some(pair), &[STATUS_ONLY, &[&url]].concat()), what);
    }
}

/// curl prints only the HTTP status it got (`000`: none).
const STATUS_ONLY: &[&str] = &["-o", "/dev/null", "-w", "%{http_code}"];

/// The connection ended in the handshake: curl failed, and no HTTP status
/// came back (`000`), so nothing was served.
#[track_caller]
fn assert_no_answer(out: &std::process::Output, what: &str) {
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && status == "000",
        "{what}: served (HTTP {status}): {out:?}"
    );
}

#[test]
fn required_client_auth_refuses_connections_without_a_certificate() {
    let s = start("required");
    let url = format!("{}/v2/", s.server.url);
    assert_no_answer(
        &s.curl(None, &[STATUS_ONLY, &[&url]].concat()),
        "no certificate",
    );
    let alice = s.clients.issue("alice", Some("alice"), Validity::Current);
    let (status, body) = s.token(Some(&alice), PUSH_ALICE, &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(common::token_claims(&body)["sub"], "alice");
}

#[test]
fn the_client_ca_is_reloaded_and_a_bad_one_refused() {
    let mut s = start("optional");
    let before = s
        .clients
        .issue("alice-before", Some("alice"), Validity::Current);
    let next = TestCa::new(&s.dir.path().join("next"), "next");
    let after = next.issue("alice-after", Some("alice"), Validity::Current);
    let ca_file = s.dir.path().join("pki/clients-ca.crt");
    replace(&ca_file, next.pem().as_bytes());
    s.log.wait_for(&["TLS client CA reloaded"]);
    let (status, body) = s.token(Some(&after), PUSH_ALICE, &[]);
    assert_eq!(
        (status, common::token_claims(&body)["sub"].clone()),
        (200, "alice".into())
    );
    let url = s.token_url(PUSH_ALICE);
    let out = s.curl(Some(&before), &[STATUS_ONLY, &[&url]].concat());
    assert_no_answer(&out, "a certificate of the replaced CA");

    replace(&ca_file, b"not a certificate\n");
    s.log
        .wait_for(&["TLS client CA reload refused", "clients-ca.crt"]);
    let (status, _) = s.token(Some(&after), PUSH_ALICE, &[]);
    assert_eq!(status, 200, "the CA in force was dropped for a bad one");
}

#[test]
fn skopeo_pushes_and_pulls_with_a_client_certificate_and_no_login() {
    require("skopeo");
    let s = start("optional");
    let env = ClientEnv::new(&s.server.host);
    // containers/image reads a certificate directory: `ca.crt` to trust,
    // and each `<name>.cert` with its `<name>.key` to present.
    let certs = env.path("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&s.server_ca, certs.join("ca.crt")).unwrap();
    let alice = s.clients.issue("alice", Some("alice"), Validity::Current);
    fs::copy(&alice.cert, certs.join("client.cert")).unwrap();
    fs::copy(&alice.key, certs.join("client.key")).unwrap();
    let certs = certs.to_str().unwrap();
    let src = env.path("src");
    write_layout(&src, "v1", &[10_000, 50_000]);
    env.skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs,
        &oci_ref(&src, "v1"),
        &env.docker_ref("alice/app:v1"),
    ]);
    env.skopeo(&[
        "inspect",
        "--cert-dir",
        certs,
        &env.docker_ref("alice/app:v1"),
    ]);
    // alice's certificate is alice: bob's namespace stays closed to it.
    let out = env.skopeo_fails(&[
        "copy",
        "--dest-cert-dir",
        certs,
        &oci_ref(&src, "v1"),
        &env.docker_ref("bob/app:v1"),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );
}

#[test]
fn check_config_checks_the_client_ca_and_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    keygen_tls_for(&dir.path().join("tls"), &[], false);
    let config = dir.path().join("portcullis.toml");
    let check = |text: &str| {
        fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("check-config")
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let pair = "[server.tls]\ncert = \"tls/tls.crt\"\nkey = \"tls/tls.key\"\n";
    let (ok, said) = check(&format!("{pair}client_auth = \"required\"\n"));
    assert!(!ok, "{said}");
    assert!(said.contains("needs server.tls.client_ca"), "{said}");

    fs::write(dir.path().join("bad-ca.crt"), "nothing here\n").unwrap();
    let (ok, said) = check(&format!("{pair}client_ca = \"bad-ca.crt\"\n"));
    assert!(!ok, "{said}");
    assert!(said.contains("bad-ca.crt"), "{said}");
    assert!(said.contains("cannot read the client CA"), "{said}");

    let ca = TestCa::new(&dir.path().join("pki"), "clients");
    let (ok, said) = check(&format!(
        "{pair}client_ca = {:?}\nclient_auth = \"required\"\n",
        ca.cert.to_str().unwrap()
    ));
    assert!(ok, "{said}");
    assert!(said.contains("client certificates required"), "{said}");
}
