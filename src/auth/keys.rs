//! Token signing keys: generation, loading from `certs/`, key ids, JWKS.
//!
//! Each key is a pair of files in the key directory, `token-<stamp>.key`
//! (PKCS#8 PEM) and `token-<stamp>.crt` (a self-signed certificate of its
//! public key). Every key present verifies; the active key whose name sorts
//! last signs. A key is on *standby* while a `token-<stamp>.standby` marker
//! sits beside it: it verifies and is listed (bundle, JWKS), but does not
//! sign. The marker is one file, created before the key and removed in one
//! step to activate it, so replicas sharing the directory never disagree on
//! whether a key signs. `bundle.crt` concatenates every certificate: it is
//! what an external registry's `rootcertbundle` points at.
//!
//! Rotating without refused tokens is therefore: generate a standby key
//! (the bundle gains its certificate), hand the bundle to every trusting
//! registry, activate the key, and once the old key's tokens have expired
//! retire it. A directory without markers is read as before: the newest key
//! signs. A running server watches the directory (`auth/reload.rs`), so each
//! step takes effect without a restart.
//!
//! Registries find the verifying key in different ways, so tokens carry all
//! of them: `x5c` (the certificate, for distribution 2.8 and 3.x), `kid` as
//! the libtrust key id (distribution 2.8) — and the JWKS published at
//! `/.well-known/jwks.json` lists each key under both its libtrust id and its
//! RFC 7638 thumbprint (distribution 3.x).

use std::path::{Path, PathBuf};

use data_encoding::{BASE32_NOPAD, BASE64, BASE64URL_NOPAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no signing key in {0} (run `portcullis keygen`)")]
    NoKey(PathBuf),
    #[error("every key in {0} is on standby, none signs (run `portcullis keygen --activate`)")]
    AllStandby(PathBuf),
    #[error("no standby key in {0} (run `portcullis keygen` to make one)")]
    NoStandby(PathBuf),
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// The signature algorithms Portcullis signs with, and the only ones it
/// accepts: never `none`, never an HMAC (which would let a public key be
/// used as a shared secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Es256,
    Rs256,
}

impl KeyKind {
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::Rs256 => Algorithm::RS256,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "es256" => Some(KeyKind::Es256),
            "rs256" => Some(KeyKind::Rs256),
            _ => None,
        }
    }
}

/// One loaded key: what signs, what verifies, and how registries name it.
pub struct TokenKey {
    pub kind: KeyKind,
    /// libtrust key id: what distribution 2.8 matches `kid` against.
    pub libtrust_id: String,
    /// RFC 7638 SHA-256 thumbprint: what distribution 3.x matches `kid` against.
    pub thumbprint: String,
    /// DER of the certificate, base64 (standard, padded), as `x5c` wants it.
    pub x5c: String,
    pub decoding: DecodingKey,
    /// The private key, in aws-lc-rs (the one crypto provider): signing
    /// directly rather than through jsonwebtoken saves re-encoding the
    /// constant header for every token a request gets.
    signer: Signer,
    rng: aws_lc_rs::rand::SystemRandom,
    /// `base64url(header)`, the same for every token this key signs.
    header_b64: String,
    jwk: Jwk,
    pub file: PathBuf,
    /// Verifies but does not sign (its `.standby` marker exists).
    pub standby: bool,
}

enum Signer {
    Ecdsa(aws_lc_rs::signature::EcdsaKeyPair),
    Rsa(aws_lc_rs::signature::RsaKeyPair),
}

impl TokenKey {
    fn load(key_path: &Path) -> Result<Self, KeyError> {
        let cert_path = key_path.with_extension("crt");
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| KeyError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let invalid = |p: &Path, m: String| KeyError::Invalid {
            path: p.to_owned(),
            message: m,
        };
        let key_pem = read(key_path)?;
        let cert_pem = read(&cert_path)?;
        let pair = KeyPair::from_pem(&key_pem).map_err(|e| invalid(key_path, e.to_string()))?;
        let kind = if pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            KeyKind::Es256
        } else if pair.is_compatible(&rcgen::PKCS_RSA_SHA256) {
            KeyKind::Rs256
        } else {
            return Err(invalid(
                key_path,
                "unsupported key type (ECDSA P-256 or RSA expected)".into(),
            ));
        };
        let encoding = match kind {
            KeyKind::Es256 => EncodingKey::from_ec_pem(key_pem.as_bytes()),
            KeyKind::Rs256 => EncodingKey::from_rsa_pem(key_pem.as_bytes()),
        }
        .map_err(|e| invalid(key_path, e.to_string()))?;
        let cert_der = pem_contents(&cert_pem, "CERTIFICATE")
            .ok_or_else(|| invalid(&cert_path, "no CERTIFICATE block".into()))?;
        let spki = pair.subject_public_key_info();
        let public_pem = pem_encode("PUBLIC KEY", &spki);
        let decoding = match kind {
            KeyKind::Es256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
            KeyKind::Rs256 => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .map_err(|e| invalid(key_path, e.to_string()))?;
        let der = pem_contents(&key_pem, "PRIVATE KEY")
            .ok_or_else(|| invalid(key_path, "no PKCS#8 PRIVATE KEY block".into()))?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signer = match kind {
            KeyKind::Es256 => aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
            )
            .map(Signer::Ecdsa)
            .map_err(|e| invalid(key_path, e.to_string()))?,
            KeyKind::Rs256 => aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
                .map(Signer::Rsa)
                .map_err(|e| invalid(key_path, e.to_string()))?,
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, kind.algorithm())
            .map_err(|e| invalid(key_path, e.to_string()))?;
        let thumbprint = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_algorithm = Some(match kind {
            KeyKind::Es256 => KeyAlgorithm::ES256,
            KeyKind::Rs256 => KeyAlgorithm::RS256,
        });
        let libtrust_id = libtrust_key_id(&spki);
        let x5c = BASE64.encode(&cert_der);
        let mut header = jsonwebtoken::Header::new(kind.algorithm());
        header.typ = Some("JWT".to_owned());
        header.kid = Some(libtrust_id.clone());
        header.x5c = Some(vec![x5c.clone()]);
        let header_json =
            serde_json::to_vec(&header).map_err(|e| invalid(key_path, e.to_string()))?;
        Ok(Self {
            kind,
            libtrust_id,
            thumbprint,
            x5c,
            decoding,
            signer,
            rng,
            header_b64: BASE64URL_NOPAD.encode(&header_json),
            jwk,
            file: key_path.to_owned(),
            standby: standby_marker(key_path).exists(),
        })
    }

    /// A signed JWT of `claims`: header (`alg`, `kid`, `x5c`), claims and
    /// signature, each base64url.
    pub fn sign_jwt(&self, claims: &[u8]) -> Result<String, String> {
        let mut token = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 400);
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(claims));
        let signature = match &self.signer {
            Signer::Ecdsa(pair) => pair
                .sign(&self.rng, token.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string())?,
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    token.as_bytes(),
                    &mut signature,
                )
                .map_err(|e| e.to_string())?;
                signature
            }
        };
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&signature));
        Ok(token)
    }

    /// Whether a token's `kid` names this key (either way of naming it).
    pub fn answers_to(&self, kid: &str) -> bool {
        kid == self.libtrust_id || kid == self.thumbprint
    }
}

/// All token keys of a directory: the newest active key signs, all verify.
pub struct KeyRing {
    keys: Vec<TokenKey>,
    /// Index of the key that signs: the last one not on standby.
    signer: usize,
    /// Tells this load from every other one of the process: what was signed
    /// or verified with a ring is remembered under its id, so a reloaded
    /// ring never meets a token an earlier one vouched for.
    id: u64,
}

/// The next [`KeyRing::id`].
static RING_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl KeyRing {
    /// Loads every `token-*.key` of `dir` (with its `.crt`, and noting
    /// which are on standby).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let paths = token_files(dir, "key").map_err(|source| KeyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if paths.is_empty() {
            return Err(KeyError::NoKey(dir.to_owned()));
        }
        let keys: Vec<TokenKey> = paths
            .iter()
            .map(|p| TokenKey::load(p))
            .collect::<Result<_, _>>()?;
        let signer = keys
            .iter()
            .rposition(|k| !k.standby)
            .ok_or_else(|| KeyError::AllStandby(dir.to_owned()))?;
        let id = RING_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { keys, signer, id })
    }

    /// This load's id, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Loads the directory, generating a first key when it has none (the
    /// embedded default's first start).
    pub fn load_or_generate(dir: &Path, kind: KeyKind) -> Result<Self, KeyError> {
        match Self::load(dir) {
            Err(KeyError::NoKey(_)) => {
                generate(dir, kind)?;
                Self::load(dir)
            }
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                generate(dir, kind)?;
                Self::load(dir)
            }
            other => other,
        }
    }

    pub fn signer(&self) -> &TokenKey {
        &self.keys[self.signer]
    }

    /// The key a token's `kid` names, if it is one of ours.
    pub fn find(&self, kid: &str) -> Option<&TokenKey> {
        self.keys.iter().find(|k| k.answers_to(kid))
    }

    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// The public keys as a JWKS, each under both of its ids.
    pub fn jwks(&self) -> JwkSet {
        let mut keys = Vec::new();
        for key in &self.keys {
            for id in [&key.thumbprint, &key.libtrust_id] {
                let mut jwk = key.jwk.clone();
                jwk.common.key_id = Some(id.clone());
                jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
                jwk.common.x509_chain = Some(vec![key.x5c.clone()]);
                keys.push(jwk);
            }
        }
        JwkSet { keys }
    }
}

/// Writes a new key pair and certificate into `dir` (created if missing),
/// and rewrites `bundle.crt`. Returns the new key's path. The private key
/// file is created readable by its owner only. The new key signs as soon as
/// the directory is loaded again: right for a first key or an emergency,
/// but a registry that trusts the old bundle refuses its tokens until it
/// has the new one (see [`generate_standby`]).
pub fn generate(dir: &Path, kind: KeyKind) -> Result<PathBuf, KeyError> {
    create(dir, kind, false)
}

/// Like [`generate`], but the new key is on standby: its certificate is in
/// `bundle.crt` at once and it verifies, while the current key keeps
/// signing until [`activate`].
pub fn generate_standby(dir: &Path, kind: KeyKind) -> Result<PathBuf, KeyError> {
    create(dir, kind, true)
}

/// Makes the newest standby key of `dir` an active one (it signs if it is
/// also the newest active key) by removing its marker; returns its path.
/// The key is loaded first, so a broken one is never activated.
pub fn activate(dir: &Path) -> Result<PathBuf, KeyError> {
    // A directory that does not exist has no standby key either.
    let keys = match token_files(dir, "key") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(|source| KeyError::Io {
            path: dir.to_owned(),
            source,
        })?,
    };
    let key = keys
        .into_iter()
        .rev()
        .find(|k| standby_marker(k).exists())
        .ok_or_else(|| KeyError::NoStandby(dir.to_owned()))?;
    TokenKey::load(&key)?;
    let marker = standby_marker(&key);
    std::fs::remove_file(&marker).map_err(|source| KeyError::Io {
        path: marker,
        source,
    })?;
    Ok(key)
}

/// Removes every active key of `dir` but the signing one (standby keys
/// stay), and rewrites `bundle.crt`. Returns the removed keys' paths. Tokens
/// those keys signed, refresh tokens included, stop verifying.
pub fn retire(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let ring = KeyRing::load(dir)?;
    let retired: Vec<PathBuf> = ring
        .keys()
        .iter()
        .filter(|k| !k.standby && k.file != ring.signer().file)
        .map(|k| k.file.clone())
        .collect();
    for key in &retired {
        for file in [key.clone(), key.with_extension("crt")] {
            std::fs::remove_file(&file).map_err(|source| KeyError::Io { path: file, source })?;
        }
    }
    write_bundle(dir)?;
    Ok(retired)
}

/// The marker that puts `key` on standby: `token-<stamp>.standby`.
pub fn standby_marker(key: &Path) -> PathBuf {
    key.with_extension("standby")
}

/// What a marker says to whoever opens it.
const STANDBY_NOTE: &str = "This key is on standby: it verifies tokens and its certificate is in \
bundle.crt, but it does not sign.\n`portcullis keygen --activate` removes this file, so that the \
key signs (a running Portcullis notices within a second).\n";

fn create(dir: &Path, kind: KeyKind, standby: bool) -> Result<PathBuf, KeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let gen_err = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    // rcgen generates through aws-lc-rs, RSA (2048 bits) included.
    let algorithm = match kind {
        KeyKind::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::Rs256 => &rcgen::PKCS_RSA_SHA256,
    };
    let pair = KeyPair::generate_for(algorithm).map_err(|e| gen_err(&e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err(&e))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Portcullis token signer");
    params.distinguished_name = name;
    // Valid from an hour ago (clocks of verifying registries drift) for ten
    // years: the certificate only carries the key; rotation is by key files.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&pair).map_err(|e| gen_err(&e))?;

    let stamp = stamp(dir);
    let key_path = dir.join(format!("token-{stamp}.key"));
    // The marker comes first: a replica loading the directory while the key
    // is being written must never take a standby key for the signing one.
    if standby {
        let marker = standby_marker(&key_path);
        write_new(&marker, STANDBY_NOTE.as_bytes(), 0o644).map_err(io(&marker))?;
    }
    // The certificate before the key, each file whole when it appears: a
    // running server reloads the directory when it changes, and a key seen
    // without its certificate, or half written, would be a refused reload.
    let cert_path = key_path.with_extension("crt");
    write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
    write_new(&key_path, pair.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
    write_bundle(dir)?;
    Ok(key_path)
}

/// `bundle.crt`: every token certificate of the directory, for registries
/// that trust Portcullis (`auth.token.rootcertbundle`).
pub fn write_bundle(dir: &Path) -> Result<(), KeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    let certs = token_files(dir, "crt").map_err(io(dir))?;
    let mut bundle = String::new();
    for cert in certs {
        bundle.push_str(&std::fs::read_to_string(&cert).map_err(io(&cert))?);
    }
    let path = dir.join("bundle.crt");
    let tmp = dir.join(".bundle.crt.tmp");
    std::fs::write(&tmp, bundle).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// The `token-*.<extension>` files of `dir`, in name order (which is key
/// order).
fn token_files(dir: &Path, extension: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == extension)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("token-"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Creates `path` with `content`, whole: written and synced under a
/// temporary name, then linked into place, which fails if `path` exists.
fn write_new(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(content)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// The stamp of a new key: seconds since the epoch, zero padded, and
/// always greater than every stamp already in `dir`, because "the newest
/// active key signs" is decided by name order. Two keys made within one second, or
/// a clock set back, still leave the newest key last. Random bits follow so
/// that two processes generating at once do not collide on a name.
fn stamp(dir: &Path) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let latest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let digits = name.strip_prefix("token-")?.split('-').next()?.to_owned();
            digits.parse::<u64>().ok()
        })
        .max();
    let secs = latest.map_or(now, |latest| now.max(latest + 1));
    let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{secs:012}-{random}")
}

/// The libtrust key id: SHA-256 of the DER SubjectPublicKeyInfo, first 240
/// bits, base32 without padding, in groups of four joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = BASE32_NOPAD.encode(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

fn pem_contents(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    BASE64.decode(body.as_bytes()).ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
