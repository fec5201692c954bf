//! HTTPS with the real binary: a pair from `keygen --tls`, served with
//! `[server.tls]` or `--tls-cert`/`--tls-key`; ALPN, the version floor, the
//! handshake under the header timeout, blob downloads over TLS, reload of
//! the pair while connections are open, and skopeo and podman trusting the
//! pair through `--cert-dir` (never `--tls-verify=false`).

use crate::common;
use crate::logs::Log;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::clients::{ClientEnv, output, require, stdout_json};
use common::oci::{layout_tag_digest, oci_ref, sha256_digest, write_layout};
use common::process::ServerProcess;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::logs::PASSWORD;

/// `portcullis keygen --tls --dir <dir>`; the certificate's path.
fn keygen_tls(dir: &Path, force: bool) -> PathBuf {
    keygen_tls_for(dir, &[], force)
}

/// `portcullis keygen --tls --dir <dir>` with a `--name` for each of
/// `names` (beside the `localhost` and `127.0.0.1` it always includes); the
/// certificate's path. The certificate is its own CA.
pub(crate) fn keygen_tls_for(dir: &Path, names: &[&str], force: bool) -> PathBuf {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.args(["keygen", "--tls", "--dir"]).arg(dir);
    for name in names {
        command.args(["--name", name]);
    }
    if force {
        command.arg("--force");
    }
    let out = command.output().expect("run keygen");
    assert!(
        out.status.success(),
        "keygen --tls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("tls.crt")
}

/// A directory with the project's policies, the user alice, a pair in
/// `tls/` and a configuration serving it (plus `extra` in `[server]`).
fn setup(extra: &str) -> tempfile::TempDir {
    let dir = crate::logs::setup();
    keygen_tls(&dir.path().join("tls"), false);
    fs::write(
        dir.path().join("portcullis.toml"),
        format!(
            "[server]\n{extra}\n[server.tls]\ncert = \"tls/tls.crt\"\nkey = \"tls/tls.key\"\n\
             [storage]\nroot = \"data\"\n"
        ),
    )
    .unwrap();
    dir
}

/// `portcullis serve` in `dir` (its ./portcullis.toml) with `args`, its log
/// at `info` read line by line, plus the `debug` line naming the path each
/// blob download took.
pub(crate) fn serve(dir: &Path, args: &[&str]) -> (ServerProcess, Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env("PORTCULLIS_LOG", "info,portcullis::serve::zero_copy=debug")
        .stderr(Stdio::piped());
    let mut server = ServerProcess::spawn(command);
    let log = Log::of(&mut server);
    (server, log)
}

/// A rustls client trusting only the certificates in `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to `host` (as `localhost`) trusting `ca`.
async fn connect(host: &str, ca: &Path) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(host).await?;
    tokio_rustls::TlsConnector::from(client_config(ca))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The DER of the certificate the connection's server presented.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate of a PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// One HTTP/1.1 GET on a kept-alive connection: status and body.
async fn get(stream: &mut TlsStream<TcpStream>, path: &str) -> (u16, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, body)
}

/// openssl has no `--version` ([`require`]'s probe).
fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`openssl` is not installed; run scripts/install-test-deps.sh (as root)"
    );
}

pub(crate) fn curl(args: &[&str]) -> Output {
    require("curl");
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl")
}

#[tokio::test]
async fn https_serves_with_an_https_realm_and_http2_by_alpn() {
    let dir = setup("");
    let (server, _log) = serve(dir.path(), &[]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let ca = dir.path().join("tls/tls.crt");
    let ca = ca.to_str().unwrap();

    // The challenge sends clients to the token endpoint over HTTPS.
    let out = curl(&["-i", "--cacert", ca, &server.at("/v2/")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 401"), "{text}");
    let realm = format!("realm=\"https://{}/token\"", server.host);
    assert!(text.contains(&realm), "{realm} not in: {text}");

    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 when it does not.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            flag,
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &server.at("/healthz"),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), version, "{flag}");
    }
}

#[test]
fn tls_1_1_is_refused_and_1_2_accepted() {
    require_openssl();
    let dir = setup("");
    let (server, _log) = serve(dir.path(), &[]);
    // SECLEVEL=0 lets OpenSSL offer TLS 1.1 at all: without it the client
    // itself would refuse, and the test would pass whatever the server did.
    let s_client = |version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &server.host, version])
            .args(["-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let old = s_client("-tls1_1");
    assert!(
        old.contains("SSL alert number"),
        "the server must answer TLS 1.1 with an alert: {old}"
    );
    assert!(old.contains("no peer certificate available"), "{old}");
    let current = s_client("-tls1_2");
    assert!(current.contains("TLSv1.2"), "{current}");
}

/// A client that sends an IP address as the server name (wrk, openssl
/// `-servername 127.0.0.1`) makes rustls warn on every handshake; the
/// default log keeps that out, and a filter naming rustls brings it back.
#[test]
fn handshakes_naming_an_ip_address_do_not_flood_the_default_log() {
    require_openssl();
    let dir = setup("");
    for (filter, warned) in [("info", false), ("info,rustls=warn", true)] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("PORTCULLIS_LOG", filter)
            .stderr(Stdio::piped());
        let mut server = ServerProcess::spawn(command);
        let mut log = Log::of(&mut server);
        for _ in 0..3 {
            Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &server.host,
                    "-servername",
                    "127.0.0.1",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
        }
        // A line after the handshakes: whatever they logged came before it.
        let ca = dir.path().join("tls/tls.crt");
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            &server.at("/token?service=portcullis"),
        ]);
        log.wait_for(&["token issued"]);
        assert_eq!(log.count("rustls") > 0, warned, "with {filter}");
    }
}

#[tokio::test]
async fn a_connection_that_never_completes_the_handshake_is_cut() {
    let dir = setup("header_timeout_secs = 1");
    let (server, _log) = serve(dir.path(), &[]);
    // One says nothing, one stops in the middle of its ClientHello.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut tcp = TcpStream::connect(&server.host).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("the connection must be cut after the header timeout");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "nothing is sent to a handshake that never completes: {read:?}"
        );
    }
    // The server still serves.
    let mut stream = connect(&server.host, &dir.path().join("tls/tls.crt"))
        .await
        .unwrap();
    assert_eq!(get(&mut stream, "/healthz").await.0, 200);
}

#[tokio::test]
async fn at_the_connection_limit_an_idle_tls_connection_is_shed() {
    let dir = setup("max_connections = 1");
    let (server, _log) = serve(dir.path(), &[]);
    let ca = dir.path().join("tls/tls.crt");
    let mut first = connect(&server.host, &ca).await.unwrap();
    assert_eq!(get(&mut first, "/healthz").await.0, 200);
    // The second connection gets the only slot once the idle first one is
    // closed for it.
    let mut second = tokio::time::timeout(Duration::from_secs(10), connect(&server.host, &ca))
        .await
        .expect("the second connection must be served")
        .unwrap();
    assert_eq!(get(&mut second, "/healthz").await.0, 200);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
        .await
        .expect("the idle first connection must be closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_large_blob_downloads_byte_exact_over_tls() {
    let dir = setup("");
    let (server, mut log) = serve(dir.path(), &["--no-auth"]);
    let ca = dir.path().join("tls/tls.crt");
    let ca = ca.to_str().unwrap();
    let blob = common::random_bytes(24 << 20);
    let digest = sha256_digest(&blob);
    let file = dir.path().join("blob");
    fs::write(&file, &blob).unwrap();
    let out = curl(&[
        "--cacert",
        ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &server.at(&format!("/v2/big/blobs/uploads/?digest={digest}")),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{out:?}");
    // Both HTTP versions: the copy through rustls must carry every byte
    // (the zero-copy path would send plaintext past TLS and break the
    // stream).
    for flag in ["--http1.1", "--http2"] {
        let back = dir.path().join("back");
        let out = curl(&[
            flag,
            "--cacert",
            ca,
            "-o",
            back.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &server.at(&format!("/v2/big/blobs/{digest}")),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{flag}: {out:?}"
        );
        assert!(fs::read(&back).unwrap() == blob, "{flag}: bytes differ");
        // Streamed through rustls, and the server says so: a TLS
        // connection offers no `sendfile` handle, whatever the HTTP version.
        let line = log.wait_for(&["blob sent"]);
        assert!(
            line.contains(r#"path="copy""#) && line.contains(r#"why="connection""#),
            "{flag}: {line}"
        );
    }
}

/// [`serve`], and a copy of the certificate it serves at start (the served
/// file is replaced by the reload tests).
fn serve_keeping_ca(dir: &Path) -> (ServerProcess, Log, PathBuf) {
    let (server, log) = serve(dir, &[]);
    let kept = dir.join("served-at-start.crt");
    fs::copy(dir.join("tls/tls.crt"), &kept).unwrap();
    (server, log, kept)
}

#[tokio::test]
async fn a_new_pair_is_served_to_new_connections_and_old_ones_keep_theirs() {
    let dir = setup("");
    let (server, mut log, kept_ca) = serve_keeping_ca(dir.path());
    let mut open = connect(&server.host, &kept_ca).await.unwrap();
    assert_eq!(get(&mut open, "/healthz").await.0, 200);

    // A new pair, moved into place file by file.
    let new_dir = dir.path().join("new");
    let new_ca = keygen_tls(&new_dir, false);
    let new_ca_kept = dir.path().join("new-ca.crt");
    fs::copy(&new_ca, &new_ca_kept).unwrap();
    fs::rename(new_dir.join("tls.key"), dir.path().join("tls/tls.key")).unwrap();
    fs::rename(new_dir.join("tls.crt"), dir.path().join("tls/tls.crt")).unwrap();
    log.wait_for(&["TLS certificate reloaded"]);

    // The open connection goes on, on its old session.
    assert_eq!(get(&mut open, "/healthz").await.0, 200);
    assert_eq!(presented(&open), der_of(&kept_ca));
    // A new one gets the new certificate, and the old one is no longer served.
    let fresh = connect(&server.host, &new_ca_kept).await.unwrap();
    assert_eq!(presented(&fresh), der_of(&new_ca_kept));
    assert!(connect(&server.host, &kept_ca).await.is_err());
}

#[tokio::test]
async fn a_bad_new_pair_is_refused_logged_and_the_old_one_kept() {
    let dir = setup("");
    let (server, mut log, served) = serve_keeping_ca(dir.path());
    let cert = dir.path().join("tls/tls.crt");

    // Unparseable.
    replace(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64 !\n");
    let line = log.wait_for(&["TLS certificate reload refused"]);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("tls/tls.crt"), "the file is named: {line}");
    let stream = connect(&server.host, &served).await.unwrap();
    assert_eq!(presented(&stream), der_of(&served));

    // A certificate whose key is not the key file's.
    let other = keygen_tls(&dir.path().join("other"), false);
    replace(&cert, &fs::read(&other).unwrap());
    let line = log.wait_for(&["TLS certificate reload refused"]);
    assert!(line.contains("does not hold the key"), "{line}");
    let mut stream = connect(&server.host, &served).await.unwrap();
    assert_eq!(presented(&stream), der_of(&served));
    assert_eq!(get(&mut stream, "/healthz").await.0, 200);
    assert_eq!(log.count("TLS certificate reload refused"), 2);
}

/// Writes `path` whole at once (a temporary file renamed over it), so that
/// the watcher never sees it half written: each edit is one reload.
pub(crate) fn replace(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn serve_takes_the_pair_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = keygen_tls(&dir.path().join("pair"), false);
    let key = dir.path().join("pair/tls.key");
    let data = dir.path().join("data");
    let server = ServerProcess::start_with(&[
        "--no-auth",
        "--data-dir",
        data.to_str().unwrap(),
        "--tls-cert",
        ca.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let out = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &server.at("/v2/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn keygen_tls_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keygen", "--tls", "--name", "registry.example", "--dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("certs.d/<host:port>/ca.crt"), "{said}");
    assert!(said.contains("--cert-dir"), "{said}");
    let mode = fs::metadata(keys.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = fs::read(keys.join("tls.crt")).unwrap();

    // The names asked for, plus localhost and 127.0.0.1.
    require_openssl();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(keys.join("tls.crt"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for name in [
        "DNS:registry.example",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ] {
        assert!(text.contains(name), "{name} not in {text}");
    }

    let again = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keygen", "--tls", "--dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(fs::read(keys.join("tls.crt")).unwrap(), first);
    keygen_tls(&keys, true);
    assert_ne!(fs::read(keys.join("tls.crt")).unwrap(), first);
}

/// A client environment for `server` that trusts it only through a
/// certificate directory holding the pair's certificate as `ca.crt` (the
/// registry is not listed as insecure).
fn tls_client_env(server: &ServerProcess, ca: &Path) -> (ClientEnv, String) {
    let env = ClientEnv::new(&server.host);
    fs::write(
        env.path("registries.conf"),
        "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
    )
    .unwrap();
    let certs = env.path("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(ca, certs.join("ca.crt")).unwrap();
    let certs = certs.to_str().unwrap().to_owned();
    (env, certs)
}

fn login(env: &ClientEnv, program: &str, certs: &str) {
    let auth_file = env.auth_file();
    let args = [
        "login",
        "--tls-verify=true",
        "--cert-dir",
        certs,
        "--authfile",
        auth_file.to_str().unwrap(),
        "--username",
        "alice",
        "--password-stdin",
        &env.host,
    ];
    let cmd = match program {
        "skopeo" => env.skopeo_cmd(&args),
        _ => env.podman_cmd(&args),
    };
    let out = output(cmd, Some(&format!("{PASSWORD}\n")));
    assert!(out.status.success(), "{program} login: {out:?}");
}

/// A server with TLS and alice, a client environment trusting it through
/// `--cert-dir` in which `program` has logged in, and a small image layout.
struct Session {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    _log: Log,
    env: ClientEnv,
    certs: String,
    src: PathBuf,
    layout: common::oci::Layout,
}

fn session(program: &str) -> Session {
    require(program);
    let dir = setup("");
    let (server, log) = serve(dir.path(), &[]);
    let (env, certs) = tls_client_env(&server, &dir.path().join("tls/tls.crt"));
    login(&env, program, &certs);
    let src = env.path("src");
    let layout = write_layout(&src, "v1", &[20_000, 300_000]);
    Session {
        _dir: dir,
        server,
        _log: log,
        env,
        certs,
        src,
        layout,
    }
}

#[test]
fn skopeo_logs_in_pushes_and_pulls_over_tls_with_cert_dir() {
    // Bound whole: the server lives as long as the session.
    let session = session("skopeo");
    let (env, certs, src, layout) = (&session.env, &session.certs, &session.src, &session.layout);
    let remote = env.docker_ref("alice/app:v1");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        certs,
        &oci_ref(src, "v1"),
        &remote,
    ]);
    let back = env.path("back");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-cert-dir",
        certs,
        &remote,
        &oci_ref(&back, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);

    // Without the certificate directory the pair is not trusted.
    let untrusted = env.skopeo_fails(&["inspect", &remote]);
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("certificate"), "{said}");
}

#[test]
fn podman_logs_in_pushes_and_pulls_over_tls_with_cert_dir() {
    let session = session("podman");
    let (server, env, certs, layout) = (
        &session.server,
        &session.env,
        &session.certs,
        &session.layout,
    );
    let pulled = env.podman(&["pull", "--quiet", "oci:src:v1"]);
    let image_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    assert_eq!(format!("sha256:{image_id}"), layout.config_digest);
    let remote = format!("{}/alice/app:v1", server.host);
    env.podman(&[
        "push",
        "--cert-dir",
        certs,
        &image_id,
        &format!("docker://{remote}"),
    ]);
    env.podman(&["rmi", "--force", &image_id]);
    let pulled = env.podman(&["pull", "--quiet", "--cert-dir", certs, &remote]);
    let pulled_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    assert_eq!(pulled_id, image_id);
    let inspect = stdout_json(&env.podman(&["image", "inspect", &remote]));
    assert_eq!(
        inspect[0]["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn the_redirect_listener_sends_plain_http_to_https() {
    let dir = setup("");
    // The redirect listener is bound by the server from its configuration,
    // and port 0 there could not be learnt: a port the kernel just gave out
    // is named instead, trying another if something took it meanwhile (the
    // server then fails to start and says nothing on its stdout).
    let mut attempt = 0;
    let (server, redirect) = loop {
        attempt += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("redirect.toml");
        let mut text = fs::read_to_string(dir.path().join("portcullis.toml")).unwrap();
        text = text.replace(
            "[server.tls]\n",
            &format!("[server.tls]\nredirect_http = \"127.0.0.1:{port}\"\n"),
        );
        fs::File::create(&config)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                "redirect.toml",
            ])
            .current_dir(dir.path())
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if let Some(url) = line.trim().strip_prefix("portcullis listening on ") {
            let host = url.split_once("://").unwrap().1.to_owned();
            break ((child, host), port);
        }
        let _ = child.wait();
        assert!(attempt < 5, "no free port for the redirect listener");
    };
    let ((mut child, host), port) = (server, redirect);
    let out = curl(&[
        "-i",
        &format!("http://localhost:{port}/v2/x/manifests/v1?n=1"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let https_port = host.rsplit_once(':').unwrap().1;
    assert!(text.starts_with("http/1.1 308"), "{text}");
    assert!(
        text.contains(&format!(
            "location: https://localhost:{https_port}/v2/x/manifests/v1?n=1"
        )),
        "{text}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn check_config_checks_the_pair() {
    let dir = setup("");
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", "portcullis.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls: tls/tls.crt"));
    let other = keygen_tls(&dir.path().join("other"), false);
    fs::copy(other, dir.path().join("tls/tls.crt")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("does not hold the key"), "{said}");
}
