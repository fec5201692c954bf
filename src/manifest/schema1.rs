//! Docker image manifest schema 1, as engines 1.6–1.9 push it: `fsLayers`
//! and `history` instead of a config and layers, signed with a JWS in
//! libtrust's "pretty signature" form.
//!
//! A signed manifest is its payload with a `signatures` member spliced in
//! before the closing brace. Each signature's protected header says how to
//! cut the payload back out (`formatLength` bytes of the body, then the
//! decoded `formatTail`); the JWS signing input is
//! `protected "." base64url(payload)`. The manifest is named by the digest of
//! that payload, so re-signing does not change its name; its fields are read
//! from the payload, so nothing unsigned is ever trusted.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use data_encoding::BASE64URL_NOPAD;
use serde::Deserialize;

use super::Manifest;
use crate::reference::Digest;

pub const SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const UNSIGNED: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Whether `media_type` is one of schema 1's.
pub fn is_schema1(media_type: &str) -> bool {
    media_type == SIGNED || media_type == UNSIGNED
}

/// Why a schema 1 manifest is refused. Every one is `MANIFEST_INVALID` on
/// the wire (via `ManifestError::Schema1`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Schema1Error {
    #[error("not valid JSON of schema 1: {0}")]
    Syntax(String),
    #[error("schema 1: schemaVersion must be 1")]
    SchemaVersion,
    #[error("schema 1: {0}")]
    Shape(&'static str),
    #[error("schema 1: history has {history} entries for {layers} fsLayers; each layer needs one")]
    HistoryLength { history: usize, layers: usize },
    #[error("schema 1 signature {index}: {reason}")]
    Signature { index: usize, reason: String },
}

/// The facts of a schema 1 manifest that storage checks against the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema1 {
    /// The repository the manifest says it belongs to.
    pub name: String,
    pub tag: String,
    /// The bytes whose digest names the manifest: the signed payload, or the
    /// whole body of an unsigned one.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    name: Option<String>,
    #[serde(default)]
    tag: String,
    fs_layers: Option<Vec<FsLayer>>,
    history: Option<Vec<History>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer {
    blob_sum: Digest,
}

#[derive(Deserialize)]
struct History {
    // Read only to require a string: it is the layer's v1 image JSON, which
    // the registry stores but does not interpret.
    #[serde(rename = "v1Compatibility")]
    _v1_compatibility: String,
}

#[derive(Deserialize)]
struct Signed {
    signatures: Option<Vec<Signature>>,
}

#[derive(Deserialize)]
struct Signature {
    header: Header,
    signature: String,
    protected: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    jwk: Option<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Protected {
    format_length: usize,
    format_tail: String,
}

/// Parses and checks a schema 1 manifest. `media_type` is the type it was
/// pushed as, if the client named one; otherwise a manifest with signatures
/// is the signed type and one without the unsigned type.
pub fn parse(media_type: Option<&str>, body: &[u8]) -> Result<Manifest, Schema1Error> {
    let signed: Signed =
        serde_json::from_slice(body).map_err(|e| Schema1Error::Syntax(e.to_string()))?;
    let signatures = signed.signatures.unwrap_or_default();
    let media_type = match media_type {
        Some(t) => t,
        None if signatures.is_empty() => UNSIGNED,
        None => SIGNED,
    };
    let payload = if signatures.is_empty() {
        if media_type == SIGNED {
            return Err(Schema1Error::Shape(
                "a signed (prettyjws) manifest needs signatures",
            ));
        }
        body.to_vec()
    } else {
        verified_payload(body, &signatures)?
    };

    let raw: RawManifest =
        serde_json::from_slice(&payload).map_err(|e| Schema1Error::Syntax(e.to_string()))?;
    if raw.schema_version != Some(1) {
        return Err(Schema1Error::SchemaVersion);
    }
    let name = raw
        .name
        .filter(|n| !n.is_empty())
        .ok_or(Schema1Error::Shape("name is required"))?;
    let layers = raw
        .fs_layers
        .filter(|l| !l.is_empty())
        .ok_or(Schema1Error::Shape("fsLayers is missing or empty"))?;
    let history = raw.history.unwrap_or_default();
    if history.len() != layers.len() {
        return Err(Schema1Error::HistoryLength {
            history: history.len(),
            layers: layers.len(),
        });
    }

    Ok(Manifest {
        media_type: media_type.to_owned(),
        blobs: layers.into_iter().map(|l| l.blob_sum).collect(),
        children: Vec::new(),
        subject: None,
        artifact_type: None,
        annotations: None,
        schema1: Some(Schema1 {
            name,
            tag: raw.tag,
            payload,
        }),
    })
}

/// Checks every signature and returns the payload they all sign. Signatures
/// that cut different payloads out of the body are refused: the manifest
/// would have no single name.
fn verified_payload(body: &[u8], signatures: &[Signature]) -> Result<Vec<u8>, Schema1Error> {
    let mut payload: Option<Vec<u8>> = None;
    for (index, s) in signatures.iter().enumerate() {
        let fail = |reason: String| Schema1Error::Signature { index, reason };
        let this = verify(body, s).map_err(fail)?;
        match &payload {
            Some(p) if *p != this => {
                return Err(fail("signs a different payload than signature 0".into()));
            }
            Some(_) => {}
            None => payload = Some(this),
        }
    }
    payload.ok_or(Schema1Error::Shape("no signatures"))
}

/// One signature: the payload it cuts out of `body`, if it signs it.
fn verify(body: &[u8], s: &Signature) -> Result<Vec<u8>, String> {
    let protected_json = b64(&s.protected, "protected")?;
    let protected: Protected =
        serde_json::from_slice(&protected_json).map_err(|e| format!("protected header: {e}"))?;
    let head = body
        .get(..protected.format_length)
        .ok_or("formatLength is past the end of the manifest")?;
    let mut payload = head.to_vec();
    payload.extend(b64(&protected.format_tail, "formatTail")?);

    let mut input = s.protected.clone().into_bytes();
    input.push(b'.');
    input.extend(BASE64URL_NOPAD.encode(&payload).into_bytes());
    let sig = b64(&s.signature, "signature")?;

    let jwk = s
        .header
        .jwk
        .as_ref()
        .ok_or("the header has no jwk (only jwk keys are supported)")?;
    let ok = match (s.header.alg.as_str(), jwk.kty.as_str()) {
        (alg @ ("ES256" | "ES384" | "ES512"), "EC") => {
            let (curve, verifier): (_, &'static signature::EcdsaVerificationAlgorithm) = match alg {
                "ES256" => ("P-256", &signature::ECDSA_P256_SHA256_FIXED),
                "ES384" => ("P-384", &signature::ECDSA_P384_SHA384_FIXED),
                _ => ("P-521", &signature::ECDSA_P521_SHA512_FIXED),
            };
            if jwk.crv.as_deref() != Some(curve) {
                return Err(format!("{alg} needs a {curve} key, not {:?}", jwk.crv));
            }
            // The uncompressed SEC1 point; aws-lc-rs checks it is on the curve.
            let mut point = vec![4u8];
            point.extend(b64(jwk.x.as_deref().ok_or("jwk has no x")?, "jwk x")?);
            point.extend(b64(jwk.y.as_deref().ok_or("jwk has no y")?, "jwk y")?);
            UnparsedPublicKey::new(verifier, point)
                .verify(&input, &sig)
                .is_ok()
        }
        (alg @ ("RS256" | "RS384" | "RS512"), "RSA") => {
            let params = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                _ => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            let key = RsaPublicKeyComponents {
                n: b64(jwk.n.as_deref().ok_or("jwk has no n")?, "jwk n")?,
                e: b64(jwk.e.as_deref().ok_or("jwk has no e")?, "jwk e")?,
            };
            key.verify(params, &input, &sig).is_ok()
        }
        (alg @ ("ES256" | "ES384" | "ES512" | "RS256" | "RS384" | "RS512"), kty) => {
            return Err(format!("alg {alg} does not go with a key of type {kty:?}"));
        }
        (alg, _) => return Err(format!("unsupported alg {alg:?}")),
    };
    if ok {
        Ok(payload)
    } else {
        Err("does not verify: the manifest or its signature was altered".into())
    }
}

/// libtrust writes base64url without padding; padding is tolerated.
fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    BASE64URL_NOPAD
        .decode(s.trim_end_matches('=').as_bytes())
        .map_err(|_| format!("{what} is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
    use serde_json::{Value, json};

    fn unsigned(name: &str, layers: &[&str]) -> Value {
        let d = |s: &str| Algorithm::Sha256.digest_of(s.as_bytes()).to_string();
        json!({
            "schemaVersion": 1,
            "name": name,
            "tag": "latest",
            "architecture": "amd64",
            "fsLayers": layers.iter().map(|l| json!({"blobSum": d(l)})).collect::<Vec<_>>(),
            "history": layers.iter().map(|l| json!({"v1Compatibility": format!("{{\"id\":\"{l}\"}}")})).collect::<Vec<_>>(),
        })
    }

    /// Signs `manifest` as libtrust does: pretty payload, the signatures
    /// spliced in before its last brace. `header` is the JWS header to use
    /// (its `jwk` is filled in from the key unless present); `sign` signs the
    /// signing input.
    fn sign_with(
        manifest: &Value,
        header: Value,
        sign: impl Fn(&[u8]) -> Vec<u8>,
    ) -> (Vec<u8>, Vec<u8>) {
        let payload = serde_json::to_string_pretty(manifest).unwrap();
        let close = payload.rfind('}').unwrap();
        let format_length = payload[..close].trim_end().len();
        let tail = &payload[format_length..];
        let protected = BASE64URL_NOPAD.encode(
            json!({"formatLength": format_length, "formatTail": BASE64URL_NOPAD.encode(tail.as_bytes()), "time": "2015-11-20T10:00:00Z"})
                .to_string()
                .as_bytes(),
        );
        let input = format!("{protected}.{}", BASE64URL_NOPAD.encode(payload.as_bytes()));
        let sig = BASE64URL_NOPAD.encode(&sign(input.as_bytes()));
        let signatures = json!([{"header": header, "signature": sig, "protected": protected}]);
        let body = format!(
            "{},\n   \"signatures\": {}{}",
            &payload[..format_length],
            serde_json::to_string_pretty(&signatures).unwrap(),
            tail
        );
        (body.into_bytes(), payload.into_bytes())
    }

    fn es256(manifest: &Value) -> (Vec<u8>, Vec<u8>) {
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = key.public_key().as_ref();
        let header = json!({"alg": "ES256", "jwk": {
            "kty": "EC", "crv": "P-256",
            "x": BASE64URL_NOPAD.encode(&point[1..33]),
            "y": BASE64URL_NOPAD.encode(&point[33..]),
        }});
        sign_with(manifest, header, |input| {
            key.sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }

    fn reason(r: Result<Manifest, Schema1Error>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn es256_signed_manifest_is_named_by_its_payload() {
        let (body, payload) = es256(&unsigned("a/b", &["l1", "l2"]));
        let m = parse(None, &body).unwrap();
        assert_eq!(m.media_type, SIGNED);
        assert_eq!(m.blobs.len(), 2);
        let s = m.schema1.unwrap();
        assert_eq!((s.name.as_str(), s.tag.as_str()), ("a/b", "latest"));
        assert_eq!(s.payload, payload);
        assert!(!String::from_utf8(payload).unwrap().contains("signatures"));
        assert_eq!(parse(Some(SIGNED), &body).unwrap().media_type, SIGNED);
    }

    #[test]
    fn rs256_and_es384_verify() {
        let manifest = unsigned("r", &["l"]);
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
        let header = json!({"alg": "RS256", "jwk": {"kty": "RSA",
            "n": BASE64URL_NOPAD.encode(&components.n), "e": BASE64URL_NOPAD.encode(&components.e)}});
        let (body, _) = sign_with(&manifest, header, |input| {
            let mut sig = vec![0; rsa.public_modulus_len()];
            rsa.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input,
                &mut sig,
            )
            .unwrap();
            sig
        });
        parse(None, &body).unwrap();

        let key = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let point = key.public_key().as_ref();
        let header = json!({"alg": "ES384", "jwk": {"kty": "EC", "crv": "P-384",
            "x": BASE64URL_NOPAD.encode(&point[1..49]), "y": BASE64URL_NOPAD.encode(&point[49..])}});
        let (body, _) = sign_with(&manifest, header.clone(), |input| {
            key.sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        });
        parse(None, &body).unwrap();

        // The same key claimed for ES256: the curve does not match the alg.
        let mut wrong = header;
        wrong["alg"] = json!("ES256");
        let (body, _) = sign_with(&manifest, wrong, |_| vec![0; 64]);
        assert!(reason(parse(None, &body)).contains("needs a P-256 key"));
    }

    #[test]
    fn tampered_payload_does_not_verify() {
        let (body, _) = es256(&unsigned("a/b", &["l1"]));
        let text = String::from_utf8(body).unwrap();
        let tampered = text.replacen("\"latest\"", "\"latesT\"", 1);
        assert!(reason(parse(None, tampered.as_bytes())).contains("does not verify"));
        // A member added after the signatures is outside the payload: the
        // signature still holds, and the manifest read is the signed one.
        let appended = text.replacen(
            "\"signatures\"",
            "\"tag\": \"other\",\n   \"signatures\"",
            1,
        );
        let m = parse(None, appended.as_bytes()).unwrap();
        assert_eq!(m.schema1.unwrap().tag, "latest");
    }

    #[test]
    fn alg_none_unknown_alg_and_mismatched_key_refused() {
        let manifest = unsigned("a", &["l"]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"});
        for (alg, want) in [
            ("none", "unsupported alg"),
            ("HS256", "unsupported alg"),
            ("RS256", "does not go with"),
        ] {
            let (body, _) = sign_with(&manifest, json!({"alg": alg, "jwk": jwk}), |_| Vec::new());
            assert!(reason(parse(None, &body)).contains(want), "{alg}");
        }
        let (body, _) = sign_with(&manifest, json!({"alg": "ES256"}), |_| Vec::new());
        assert!(reason(parse(None, &body)).contains("no jwk"));
    }

    #[test]
    fn shape_checks() {
        let body = unsigned("a", &["l"]).to_string();
        let m = parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.media_type, UNSIGNED);
        assert_eq!(m.schema1.unwrap().payload, body.as_bytes());
        assert!(reason(parse(Some(SIGNED), body.as_bytes())).contains("needs signatures"));

        let mut empty = unsigned("a", &[]);
        assert!(reason(parse(None, empty.to_string().as_bytes())).contains("fsLayers"));
        empty.as_object_mut().unwrap().remove("fsLayers");
        assert!(reason(parse(None, empty.to_string().as_bytes())).contains("fsLayers"));

        let mut short = unsigned("a", &["l1", "l2"]);
        short["history"].as_array_mut().unwrap().pop();
        assert_eq!(
            parse(None, short.to_string().as_bytes()).unwrap_err(),
            Schema1Error::HistoryLength {
                history: 1,
                layers: 2
            }
        );
        let mut nameless = unsigned("a", &["l"]);
        nameless["name"] = json!("");
        assert!(reason(parse(None, nameless.to_string().as_bytes())).contains("name"));
        let mut bad_digest = unsigned("a", &["l"]);
        bad_digest["fsLayers"][0]["blobSum"] = json!("sha256:zz");
        assert!(parse(None, bad_digest.to_string().as_bytes()).is_err());
    }

    #[test]
    fn format_length_past_the_end_is_refused() {
        let manifest = unsigned("a", &["l"]);
        let (body, _) = es256(&manifest);
        let text = String::from_utf8(body).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let protected = v["signatures"][0]["protected"].as_str().unwrap();
        let forged = BASE64URL_NOPAD.encode(
            json!({"formatLength": 1_000_000, "formatTail": "fQ"})
                .to_string()
                .as_bytes(),
        );
        let text = text.replace(protected, &forged);
        assert!(reason(parse(None, text.as_bytes())).contains("formatLength"));
    }
}
