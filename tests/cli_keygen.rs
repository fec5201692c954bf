//! `portcullis keygen` run as the real binary: the files it writes, their
//! permissions, the bundle, and the ids it prints, checked against the key
//! ring the server loads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis::auth::keys::{KeyKind, KeyRing};

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

/// The value after `label` on its line of the output.
#[track_caller]
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
        .trim()
        .to_owned()
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

    let key_path = dir.path().join(field(&said, "new es256 key:"));
    let names = names(&certs);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "bundle.crt");
    let stem = key_path.file_stem().unwrap().to_str().unwrap();
    assert!(stem.starts_with("token-"), "{stem}");
    assert_eq!(names[1], format!("{stem}.crt"));
    assert_eq!(names[2], format!("{stem}.key"));
    assert_eq!(
        dir.path().join(field(&said, "certificate:")),
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
    let libtrust = field(&said, "key id (libtrust, distribution 2.8):");
    assert_eq!(libtrust, key.libtrust_id);
    // 12 groups of 4 base32 characters.
    let groups: Vec<&str> = libtrust.split(':').collect();
    assert_eq!(groups.len(), 12, "{libtrust}");
    assert!(groups.iter().all(|g| g.len() == 4), "{libtrust}");
    let thumbprint = field(&said, "thumbprint (RFC 7638, distribution 3.x and JWKS):");
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
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let old = dir.path().join(field(&stdout(&out), "new es256 key:"));
    let old = rename_pair(&old, "000000000001-aaaaaa");

    let out = portcullis(dir.path(), &["keygen", "--dir", "certs", "--type", "rs256"]);
    assert_ok(&out);
    let said = stdout(&out);
    let new = dir.path().join(field(&said, "new rs256 key:"));
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

    // The new key signs, the old one still verifies (it is in the ring).
    let ring = KeyRing::load(&certs).unwrap();
    assert_eq!(ring.keys().len(), 2);
    assert_eq!(ring.signer().file, certs.join(new.file_name().unwrap()));
    assert_eq!(ring.signer().kind, KeyKind::Rs256);
    assert_eq!(
        field(&said, "key id (libtrust, distribution 2.8):"),
        ring.signer().libtrust_id
    );
    assert_eq!(
        field(&said, "thumbprint (RFC 7638, distribution 3.x and JWKS):"),
        ring.signer().thumbprint
    );
    let old_key = &ring.keys()[0];
    assert_eq!(old_key.kind, KeyKind::Es256);
    assert_ne!(old_key.libtrust_id, ring.signer().libtrust_id);
    assert!(said.contains("The newest key signs new tokens"), "{said}");
}

#[test]
fn a_key_that_sorts_after_the_new_one_is_pointed_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
    assert_ok(&out);
    let first = dir.path().join(field(&stdout(&out), "new es256 key:"));
    // As if written with a clock far ahead.
    let later = rename_pair(&first, "999999999999-zzzzzz");
    let out = portcullis(dir.path(), &["keygen", "--dir", "certs"]);
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
        field(&said, "new es256 key:").starts_with("signing/token-"),
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
    assert!(field(&stdout(&out), "new es256 key:").starts_with("./certs/token-"));
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
