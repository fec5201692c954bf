use std::path::Path;

use data_encoding::BASE64URL_NOPAD;

use super::*;
use crate::auth::keys::{self, KeyKind};

const ISS: &str = "portcullis";
const AUD: &str = "registry.test";

fn ring(kind: KeyKind) -> (tempfile::TempDir, KeyRing) {
    let dir = tempfile::tempdir().unwrap();
    keys::generate(dir.path(), kind).unwrap();
    let ring = KeyRing::load(dir.path()).unwrap();
    (dir, ring)
}

fn access(name: &str, actions: &[&str]) -> Vec<AccessEntry> {
    vec![AccessEntry {
        kind: "repository".into(),
        name: name.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }]
}

fn claims() -> Claims {
    Claims::new(
        ISS,
        "alice",
        AUD,
        Duration::from_secs(300),
        access("a/b", &["pull"]),
    )
}

/// Re-assembles a token from parts, for forging.
fn forge(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(signature)
    )
}

#[test]
fn es256_and_rs256_round_trip_with_kid_and_x5c() {
    for kind in [KeyKind::Es256, KeyKind::Rs256] {
        let (_dir, ring) = ring(kind);
        let c = claims();
        let token = sign(&ring, &c).unwrap();
        assert_eq!(verify(&ring, &token, ISS, AUD).unwrap(), c);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, kind.algorithm());
        assert_eq!(
            header.kid.as_deref(),
            Some(ring.signer().libtrust_id.as_str())
        );
        assert_eq!(header.x5c.unwrap().len(), 1);
        // `aud` is a single string on the wire.
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(payload.as_bytes()).unwrap()).unwrap();
        assert!(json["aud"].is_string());
    }
}

#[test]
fn libtrust_key_id_shape() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let id = &ring.signer().libtrust_id;
    let groups: Vec<&str> = id.split(':').collect();
    assert_eq!(groups.len(), 12, "{id}");
    assert!(groups.iter().all(|g| {
        g.len() == 4
            && g.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    }));
    // Known answer (SHA-256 of nothing, 240 bits, base32, by hand in Python).
    assert_eq!(
        keys::libtrust_key_id(&[]),
        "4OYM:IQUY:7QOB:JGX3:6TEJ:S35Z:EQT2:4QPE:MSNZ:GTFE:SWMR:W6CS"
    );
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let mut c = claims();
    c.exp = now() - 2 * LEEWAY_SECS;
    let token = sign(&ring, &c).unwrap();
    assert_eq!(verify(&ring, &token, ISS, AUD), Err(TokenError::Expired));

    let mut c = claims();
    c.nbf = now() + 10 * LEEWAY_SECS;
    let token = sign(&ring, &c).unwrap();
    assert_eq!(
        verify(&ring, &token, ISS, AUD),
        Err(TokenError::NotYetValid)
    );

    // Within the leeway, drift is tolerated.
    let mut c = claims();
    c.exp = now() - LEEWAY_SECS / 2;
    assert!(verify(&ring, &sign(&ring, &c).unwrap(), ISS, AUD).is_ok());
}

#[test]
fn wrong_issuer_or_audience_is_refused() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let token = sign(&ring, &claims()).unwrap();
    assert_eq!(verify(&ring, &token, "other", AUD), Err(TokenError::Issuer));
    assert_eq!(
        verify(&ring, &token, ISS, "other"),
        Err(TokenError::Audience)
    );
}

#[test]
fn alg_none_is_refused() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let kid = ring.signer().libtrust_id.clone();
    let claims = serde_json::to_value(claims()).unwrap();
    for alg in ["none", "None", "NONE"] {
        let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
        let token = forge(&header, &claims, b"");
        assert!(verify(&ring, &token, ISS, AUD).is_err(), "{alg}");
        let token = token.trim_end_matches('.').to_owned() + ".";
        assert!(verify(&ring, &token, ISS, AUD).is_err(), "{alg}");
    }
}

#[test]
fn hmac_keyed_with_the_public_key_is_refused() {
    let (dir, ring) = ring(KeyKind::Es256);
    let kid = ring.signer().libtrust_id.clone();
    // The attacker knows the certificate (it is public): sign HS256 with it.
    let cert = std::fs::read(ring.signer().file.with_extension("crt")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid);
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(&cert),
    )
    .unwrap();
    assert_eq!(verify(&ring, &token, ISS, AUD), Err(TokenError::Algorithm));
    drop(dir);
}

#[test]
fn tampered_payload_is_refused() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let token = sign(&ring, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut escalated = claims();
    escalated.access = access("a/b", &["pull", "push", "delete"]);
    let payload = BASE64URL_NOPAD.encode(serde_json::to_string(&escalated).unwrap().as_bytes());
    let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_eq!(verify(&ring, &forged, ISS, AUD), Err(TokenError::Signature));
}

#[test]
fn another_keys_signature_under_our_kid_is_refused() {
    let (_dir, ring) = ring(KeyKind::Es256);
    let (_other_dir, other) = self::ring(KeyKind::Es256);
    let token = sign(&other, &claims()).unwrap();
    // Rewrite the header to claim our key id (and our certificate).
    let parts: Vec<&str> = token.split('.').collect();
    let mut header = jsonwebtoken::decode_header(&token).unwrap();
    header.kid = Some(ring.signer().libtrust_id.clone());
    header.x5c = Some(vec![ring.signer().x5c.clone()]);
    let header = BASE64URL_NOPAD.encode(serde_json::to_string(&header).unwrap().as_bytes());
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(verify(&ring, &forged, ISS, AUD), Err(TokenError::Signature));
    // And a token from the other key as it is names a key we do not have.
    assert_eq!(verify(&ring, &token, ISS, AUD), Err(TokenError::UnknownKey));
}

#[test]
fn garbage_is_malformed() {
    let (_dir, ring) = ring(KeyKind::Es256);
    for junk in ["", "a", "a.b", "a.b.c", "....", "eyJ.eyJ.sig"] {
        assert!(verify(&ring, junk, ISS, AUD).is_err(), "{junk:?}");
    }
}

#[test]
fn rotation_newest_signs_all_verify() {
    let dir = tempfile::tempdir().unwrap();
    keys::generate(dir.path(), KeyKind::Es256).unwrap();
    let old = KeyRing::load(dir.path()).unwrap();
    let old_token = sign(&old, &claims()).unwrap();
    keys::generate(dir.path(), KeyKind::Rs256).unwrap();
    let ring = KeyRing::load(dir.path()).unwrap();
    assert_eq!(ring.keys().len(), 2);
    assert_eq!(ring.signer().kind, KeyKind::Rs256);
    assert!(verify(&ring, &old_token, ISS, AUD).is_ok());
    let new_token = sign(&ring, &claims()).unwrap();
    assert!(verify(&ring, &new_token, ISS, AUD).is_ok());
    // The bundle holds both certificates; the JWKS names each key twice.
    let bundle = std::fs::read_to_string(dir.path().join("bundle.crt")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    let jwks = ring.jwks();
    assert_eq!(jwks.keys.len(), 4);
    assert!(jwks.find(&ring.signer().thumbprint).is_some());
    assert!(jwks.find(&ring.signer().libtrust_id).is_some());
    // Removing the old key: its tokens stop verifying.
    std::fs::remove_file(&old.signer().file).unwrap();
    std::fs::remove_file(old.signer().file.with_extension("crt")).unwrap();
    let ring = KeyRing::load(dir.path()).unwrap();
    assert_eq!(
        verify(&ring, &old_token, ISS, AUD),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn first_start_generates_a_key_and_private_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ring = KeyRing::load_or_generate(&certs, KeyKind::Es256).unwrap();
    assert_eq!(ring.keys().len(), 1);
    let again = KeyRing::load_or_generate(&certs, KeyKind::Es256).unwrap();
    assert_eq!(again.signer().libtrust_id, ring.signer().libtrust_id);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring.signer().file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
    }
    assert!(Path::new(&certs.join("bundle.crt")).exists());
}

#[test]
fn keys_generated_in_one_second_still_leave_the_newest_signing() {
    let dir = tempfile::tempdir().unwrap();
    let mut newest = Vec::new();
    for _ in 0..4 {
        newest.push(keys::generate(dir.path(), KeyKind::Es256).unwrap());
    }
    let ring = KeyRing::load(dir.path()).unwrap();
    assert_eq!(ring.keys().len(), 4);
    assert_eq!(&ring.signer().file, newest.last().unwrap());
}

/// Key directories written before the switch of crypto provider (by
/// `portcullis keygen` of that time, committed under `fixtures/`) must load
/// unchanged: same key ids, same JWKS, their old tokens still verify and
/// the keys still sign tokens that verify.
#[test]
fn keys_and_tokens_of_earlier_versions_still_load_and_verify() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/token/fixtures");
    let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap();
    for (kind, name) in [(KeyKind::Es256, "es256"), (KeyKind::Rs256, "rs256")] {
        let ring = KeyRing::load(&fixtures.join(name)).unwrap();
        assert_eq!(ring.signer().kind, kind);
        let jwks: serde_json::Value =
            serde_json::from_str(&read(&format!("{name}.jwks.json"))).unwrap();
        assert_eq!(serde_json::to_value(ring.jwks()).unwrap(), jwks, "{name}");

        // Signed by the earlier version, valid until 2100.
        let old = read(&format!("{name}.jwt"));
        let c = verify(&ring, old.trim(), ISS, AUD).unwrap();
        assert_eq!((c.sub.as_str(), c.jti.as_str()), ("alice", "fixture"));

        let c = claims();
        let token = sign(&ring, &c).unwrap();
        assert_eq!(verify(&ring, &token, ISS, AUD).unwrap(), c);
    }
}
