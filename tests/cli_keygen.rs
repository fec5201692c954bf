//! `portcullis keygen` run as the real binary: the files it writes, their
//! permissions, the bundle, and the ids it prints, checked against the key
//! ring the server loads.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::{self, ServerProcess};
use data_encoding::BASE64URL_NOPAD;
use portcullis::auth::keys::{KeyKind, KeyRing};
use serde_json::Value;

fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run portcullis")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The file names of a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A first key in `dir/certs`, renamed to sort before any generated one.
fn first_key(dir: &Path) -> PathBuf {
    let out = portcullis(dir, &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let key = dir.join(common::field(&stdout(&out), "new es256 key:"));
    rename_pair(&key, "000000000001-aaaaaa")
}

/// Renames a key pair so that it sorts before (or after) any generated one:
/// generated names carry the current second, and two keys made within one
/// second would otherwise sort in random order.
fn rename_pair(key: &Path, stamp: &str) -> PathBuf {
    let dir = key.parent().unwrap();
    let new_key = dir.join(format!("token-{stamp}.key"));
    std::fs::rename(key, &new_key).unwrap();
    std::fs::rename(key.with_extension("crt"), new_key.with_extension("crt")).unwrap();
    new_key
}

#[test]
fn es256_key_files_modes_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--type", "es256"]);
    assert_ok(&out);
    let said = stdout(&out);
    let certs = dir.path().join("certs");

    let key_path = dir.path().join(common::field(&said, "new es256 key:"));
    let names = names(&certs);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "bundle.crt");
    let stem = key_path.file_stem().unwrap().to_str().unwrap();
    assert!(stem.starts_with("token-"), "{stem}");
    assert_eq!(names[1], format!("{stem}.crt"));
    assert_eq!(names[2], format!("{stem}.key"));
    assert_eq!(
        dir.path().join(common::field(&said, "certificate:")),
        key_path.with_extension("crt")
    );

    // The private key is its owner's alone; certificates are public.
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&key_path.with_extension("crt")) & 0o600, 0o600);
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );
    let cert = std::fs::read_to_string(key_path.with_extension("crt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(certs.join("bundle.crt")).unwrap(),
        cert
    );
    assert!(said.contains("(1 certificate)"), "{said}");

    // The printed ids are those the server answers to.
    let ring = KeyRing::load(&certs).unwrap();
    let key = ring.signer();
    assert_eq!(key.kind, KeyKind::Es256);
    assert_eq!(key.file, certs.join(format!("{stem}.key")));
    let libtrust = common::field(&said, "key id (libtrust, distribution 2.8):");
    assert_eq!(libtrust, key.libtrust_id);
    // 12 groups of 4 base32 characters.
    let groups: Vec<&str> = libtrust.split(':').collect();
    assert_eq!(groups.len(), 12, "{libtrust}");
    assert!(groups.iter().all(|g| g.len() == 4), "{libtrust}");
    let thumbprint = common::field(&said, "thumbprint (RFC 7638, distribution 3.x and JWKS):");
    assert_eq!(thumbprint, key.thumbprint);
    // base64url of a SHA-256 digest, without padding.
    assert_eq!(thumbprint.len(), 43, "{thumbprint}");
    assert!(said.contains("The newest key signs new tokens"), "{said}");
    assert!(said.contains("until their .key and .crt files are removed"));
}

#[test]
fn rs256_rotation_keeps_the_old_key_and_bundles_both() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let old = first_key(dir.path());

    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--type", "rs256"]);
    assert_ok(&out);
    let said = stdout(&out);
    let new = dir.path().join(common::field(&said, "new rs256 key:"));
    assert_eq!(mode(&new), 0o600);
    assert!(
        std::fs::read_to_string(&new)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(said.contains("(2 certificates)"), "{said}");

    // The bundle holds both certificates, in key order.
    let bundle = std::fs::read_to_string(certs.join("bundle.crt")).unwrap();
    let expected = std::fs::read_to_string(old.with_extension("crt")).unwrap()
        + &std::fs::read_to_string(new.with_extension("crt")).unwrap();
    assert_eq!(bundle, expected);
    assert_eq!(bundle.matches("-----BEGIN CERTIFICATE-----").count(), 2);

    // Both verify (they are in the ring); the old one signs until the new
    // one is activated.
    let ring = KeyRing::load(&certs).unwrap();
    assert_eq!(ring.keys().len(), 2);
    assert_eq!(ring.signer().file, certs.join(old.file_name().unwrap()));
    let new_key = &ring.keys()[1];
    assert!(new_key.standby);
    assert_eq!(new_key.kind, KeyKind::Rs256);
    assert_eq!(
        common::field(&said, "key id (libtrust, distribution 2.8):"),
        new_key.libtrust_id
    );
    assert_eq!(
        common::field(&said, "thumbprint (RFC 7638, distribution 3.x and JWKS):"),
        new_key.thumbprint
    );
    assert_ne!(ring.signer().libtrust_id, new_key.libtrust_id);

    assert_ok(&portcullis(
        dir.path(),
        &["keygen", "--dir", "certs", "--activate"],
    ));
    let ring = KeyRing::load(&certs).unwrap();
    assert_eq!(ring.signer().file, certs.join(new.file_name().unwrap()));
    assert_eq!(ring.signer().kind, KeyKind::Rs256);
    assert_eq!(ring.keys()[0].kind, KeyKind::Es256);
}

#[test]
fn a_key_that_sorts_after_the_new_one_is_pointed_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let first = dir
        .path()
        .join(common::field(&stdout(&out), "new es256 key:"));
    // As if written with a clock far ahead.
    let later = rename_pair(&first, "999999999999-zzzzzz");
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--now"]);
    assert_ok(&out);
    let said = stdout(&out);
    assert!(!said.contains("The newest key signs"), "{said}");
    assert!(
        said.contains(&format!(
            "Note: certs/{} sorts after the new key and keeps signing",
            later.file_name().unwrap().to_str().unwrap()
        )),
        "{said}"
    );
}

#[test]
fn directory_and_type_come_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.toml"),
        "[token]\nkey_dir = \"signing\"\nkey_type = \"ES256\"\n",
    )
    .unwrap();
    let out = portcullis(dir.path(), &["keygen", "--config", "custom.toml"]);
    assert_ok(&out);
    let said = stdout(&out);
    assert!(
        common::field(&said, "new es256 key:").starts_with("signing/token-"),
        "{said}"
    );
    assert_eq!(
        KeyRing::load(&dir.path().join("signing"))
            .unwrap()
            .signer()
            .kind,
        KeyKind::Es256
    );
    // Without a configuration: the embedded default, ./certs.
    let out = portcullis(dir.path(), &["keygen"]);
    assert_ok(&out);
    assert!(common::field(&stdout(&out), "new es256 key:").starts_with("./certs/token-"));
}

#[test]
fn bad_arguments_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--type", "hs256"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(dir.path().join("bad.toml"), "[token]\nkey_type = \"dsa\"\n").unwrap();
    let out = portcullis(dir.path(), &["keygen", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token.key_type"));
    assert!(names(dir.path()) == ["bad.toml"], "{:?}", names(dir.path()));
    // A key directory that is a file cannot be written.
    std::fs::write(dir.path().join("certs"), "").unwrap();
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `portcullis serve` over `dir/certs`, its other files in `dir` too.
fn serve(dir: &Path) -> ServerProcess {
    let config = process::config_in(dir);
    ServerProcess::start_with(&["--config", config.to_str().unwrap()])
}

fn get_json(url: &str) -> Value {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let reply = reqwest::get(url).await.expect("request");
            assert_eq!(reply.status(), 200, "{url}");
            reply.json().await.expect("JSON")
        })
}

/// The `kid` of an anonymous token the server issues now.
fn signing_kid(server: &ServerProcess) -> String {
    let reply = get_json(&server.at("/token?service=portcullis"));
    let token = reply["token"].as_str().expect("token");
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(header.as_bytes()).unwrap()).unwrap();
    header["kid"].as_str().expect("kid").to_owned()
}

/// The `kid`s the server's JWKS lists.
fn jwks_ids(server: &ServerProcess) -> Vec<String> {
    let jwks = get_json(&server.at("/.well-known/jwks.json"));
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// The whole rotation as the operator runs it: a second key waits on
/// standby (in the bundle and the JWKS, not signing) and says what to do
/// next; `--activate` makes it sign from the next start; `--retire` drops
/// the old key from the directory and the bundle.
#[test]
fn a_second_key_waits_on_standby_until_activated_then_the_old_one_retires() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let old = first_key(dir.path());
    let old_id = KeyRing::load(&certs).unwrap().signer().libtrust_id.clone();

    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let said = stdout(&out);
    let new = dir.path().join(common::field(&said, "new es256 key:"));
    let new_id = common::field(&said, "key id (libtrust, distribution 2.8):");
    let new_thumbprint = common::field(&said, "thumbprint (RFC 7638, distribution 3.x and JWKS):");
    assert!(said.contains("(2 certificates)"), "{said}");
    assert!(
        said.contains(&format!(
            "The new key is on standby: it verifies and is in the bundle, but certs/{} keeps signing.",
            old.file_name().unwrap().to_str().unwrap()
        )),
        "{said}"
    );
    assert!(
        said.contains(
            "1. give certs/bundle.crt to every registry that trusts Portcullis and restart it"
        ),
        "{said}"
    );
    assert!(
        said.contains(
            "2. run `portcullis keygen --activate`: a running Portcullis signs with the new key"
        ),
        "{said}"
    );
    assert!(said.contains("`portcullis keygen --retire`"), "{said}");
    assert!(!said.contains("The newest key signs"), "{said}");
    // Standby is one marker file beside the key, which replicas sharing the
    // directory all read.
    let marker = new.with_extension("standby");
    assert!(marker.exists(), "{:?}", names(&certs));
    assert_eq!(
        std::fs::read_to_string(certs.join("bundle.crt"))
            .unwrap()
            .matches("-----BEGIN CERTIFICATE-----")
            .count(),
        2
    );

    // The server signs with the old key and publishes both, so clients and
    // registries that fetch the JWKS have the new key ahead of its use.
    let server = serve(dir.path());
    assert_eq!(signing_kid(&server), old_id);
    let ids = jwks_ids(&server);
    assert_eq!(ids.len(), 4, "{ids:?}");
    for id in [&old_id, &new_id, &new_thumbprint] {
        assert!(ids.contains(id), "{id} not in {ids:?}");
    }

    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--activate"]);
    assert_ok(&out);
    let said = stdout(&out);
    assert_eq!(dir.path().join(common::field(&said, "activated:")), new);
    assert_eq!(
        common::field(&said, "key id (libtrust, distribution 2.8):"),
        new_id
    );
    assert!(
        said.contains("A running Portcullis signs new tokens with it"),
        "{said}"
    );
    assert!(!marker.exists());
    // The running server takes the activation up (the key directory is
    // watched): it signs with the new key, and both still verify.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while signing_kid(&server) != new_id {
        assert!(
            std::time::Instant::now() < deadline,
            "the running server never signed with the activated key"
        );
        std::thread::yield_now();
    }
    assert_eq!(jwks_ids(&server).len(), 4);
    drop(server);

    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--retire"]);
    assert_ok(&out);
    let said = stdout(&out);
    assert!(
        said.contains(&format!(
            "retired: certs/{}",
            old.file_name().unwrap().to_str().unwrap()
        )),
        "{said}"
    );
    assert!(said.contains("(1 certificate)"), "{said}");
    assert!(said.contains("refresh tokens"), "{said}");
    let stem = new.file_stem().unwrap().to_str().unwrap();
    assert_eq!(
        names(&certs),
        [
            "bundle.crt".to_owned(),
            format!("{stem}.crt"),
            format!("{stem}.key")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(certs.join("bundle.crt")).unwrap(),
        std::fs::read_to_string(new.with_extension("crt")).unwrap()
    );
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--retire"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("nothing to retire"),
        "{}",
        stdout(&out)
    );
}

/// `--now` keeps the immediate rotation for an emergency, and says what it
/// costs.
#[test]
fn now_makes_a_second_key_sign_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    first_key(dir.path());
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--now"]);
    assert_ok(&out);
    let said = stdout(&out);
    let new = dir.path().join(common::field(&said, "new es256 key:"));
    assert!(said.contains("The newest key signs new tokens"), "{said}");
    assert!(
        said.contains("refuse its tokens until they have the new bundle"),
        "{said}"
    );
    assert!(!new.with_extension("standby").exists());
    assert_eq!(KeyRing::load(&certs).unwrap().signer().file, new);
}

#[test]
fn activation_needs_a_standby_key_and_a_directory_cannot_be_left_without_a_signer() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--activate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no standby key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let only = dir
        .path()
        .join(common::field(&stdout(&out), "new es256 key:"));
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--activate"]);
    assert_eq!(out.status.code(), Some(1));

    // A marker put by hand beside the only key: nothing signs, which the
    // ring (so the server at start) and keygen refuse, saying how to fix it.
    std::fs::write(only.with_extension("standby"), "").unwrap();
    let err = KeyRing::load(&certs).err().expect("no signer");
    assert!(err.to_string().contains("keygen --activate"), "{err}");
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("every key in certs is on standby"),
        "{stderr}"
    );
    assert_eq!(
        names(&certs).len(),
        4,
        "nothing written: {:?}",
        names(&certs)
    );
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--activate"]);
    assert_ok(&out);
    assert_eq!(KeyRing::load(&certs).unwrap().signer().file, only);

    // The steps cannot be mixed.
    let out = portcullis(dir.path(), &["keygen", "--activate", "--retire"]);
    assert_eq!(out.status.code(), Some(2));
    let out = portcullis(dir.path(), &["keygen", "--now", "--activate"]);
    assert_eq!(out.status.code(), Some(2));
}
