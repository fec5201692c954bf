//! HTTPS: the rustls acceptor, the certificate pair it serves from PEM files,
//! and their reload while the server runs.
//!
//! The pair sits behind a certificate resolver that every handshake asks, so
//! a reload changes what *new* handshakes get and nothing else: a connection
//! keeps the session it negotiated with the old pair until it ends. A new
//! pair that cannot be read, or whose key is not the certificate's, is
//! refused with one log line and the old pair stays.
//!
//! With `client_ca`, clients are asked for a certificate chaining to it
//! (required or optional, `client_auth`); the CA file is reloaded like the
//! pair, behind a verifier that delegates to the current one. A verified
//! client certificate reaches the handlers as [`ClientCert`], the name its
//! subject gives; mapping that name to an account is the token endpoint's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::auth::reload::{CHECK_EVERY, Current, Fingerprint};
use crate::config::{ClientAuth, TlsConfig};

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read the certificate chain: {reason}", path.display())]
    Chain { path: PathBuf, reason: String },
    #[error("{}: no certificate in the file (expected PEM `CERTIFICATE` blocks)", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: cannot read the private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{} does not hold the key of the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: cannot read the client CA certificates: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The provider of the whole process (aws-lc-rs, rustls' default), named
/// rather than taken from rustls' process default so that a dependency
/// enabling a second provider cannot make the choice ambiguous.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The pair in `tls`: the chain, and a key that must be the first
/// certificate's.
pub fn load_pair(tls: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Chain {
            path: tls.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(tls.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::Key {
        path: tls.key.clone(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: tls.key.clone(),
            reason: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|_| TlsError::Mismatch {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    })?;
    Ok(pair)
}

/// The verifier of client certificates for `client_ca`: certificates must
/// chain to one of the file's CA certificates.
pub fn load_client_verifier(
    path: &Path,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        ClientAuth::Required => builder,
    };
    builder.build().map_err(|e| bad(e.to_string()))
}

// What new handshakes use of a reloadable file (the certificate pair, the
// client verifier): rustls keeps one of each per server configuration, so
// the configuration holds a `Current`, which hands out whichever the last
// good load made. A reload is one pointer swap.
impl ResolvesServerCert for Current<CertifiedKey> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ClientCertVerifier for Current<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.get().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.get().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are optional in both TLS versions and borrowing them
        // from a verifier that a reload may replace is not possible: sent
        // empty, clients offer whichever certificate they were given.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// A client certificate the handshake verified, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's first common name (CN), the name it vouches for.
    /// `None`: the subject has none, so it names no one.
    pub name: Option<String>,
    /// The whole subject, for the log.
    pub subject: String,
}

impl ClientCert {
    /// The end-entity certificate of a verified chain. `None` only for a
    /// certificate x509-parser cannot read, which webpki accepted.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(Self {
            name,
            subject: subject.to_string(),
        })
    }
}

/// The TLS side of a listener: the acceptor, and the files it reloads from.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current<CertifiedKey>>,
    client_ca: Option<Arc<Current<dyn ClientCertVerifier>>>,
    files: TlsConfig,
    /// The files' fingerprint as last looked at (at start: as they were
    /// loaded, so an edit made before the first look counts); shared by the
    /// watcher and `SIGHUP`, so each change is loaded once whoever saw it.
    seen: Arc<Mutex<Files>>,
}

/// Fingerprints of the pair's two files and of the client CA file.
type Files = (Fingerprint, Fingerprint, Option<Fingerprint>);

impl Tls {
    /// Loads the pair `tls` names; TLS 1.2 and 1.3 only, ALPN `h2` then
    /// `http/1.1` (hyper's auto builder serves whichever was chosen).
    pub fn new(tls: &TlsConfig) -> Result<Self, TlsError> {
        let loaded = fingerprint(tls);
        let pair = load_pair(tls)?;
        let current = Arc::new(Current::new(Arc::new(pair)));
        let client_ca = match &tls.client_ca {
            Some(path) => Some(Arc::new(Current::new(load_client_verifier(
                path,
                tls.client_auth,
            )?))),
            None => None,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = match &client_ca {
            Some(verifier) => builder
                .with_client_cert_verifier(Arc::clone(verifier) as Arc<dyn ClientCertVerifier>),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
            client_ca,
            files: tls.clone(),
            seen: Arc::new(Mutex::new(loaded)),
        })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Loads the client CA file again and, when it is good, verifies new
    /// handshakes' client certificates against it; otherwise logs why and
    /// keeps the CA in force now.
    fn reload_client_ca(&self) {
        let (Some(current), Some(path)) = (&self.client_ca, &self.files.client_ca) else {
            return;
        };
        match load_client_verifier(path, self.files.client_auth) {
            Ok(verifier) => {
                current.set(verifier);
                tracing::info!(
                    client_ca = %path.display(),
                    "TLS client CA reloaded: new connections are verified against it"
                );
            }
            Err(e) => tracing::error!(
                "TLS client CA reload refused, the previous one stays in force: {e}"
            ),
        }
    }

    /// Loads the files again and, when they make a good pair, serves it to
    /// new handshakes; otherwise logs why and keeps the pair served now.
    fn reload(&self) {
        match load_pair(&self.files) {
            Ok(pair) => {
                let holds = describe(&pair);
                self.current.set(Arc::new(pair));
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded: new connections get the new pair ({holds})"
                );
            }
            Err(e) => tracing::error!(
                "TLS certificate reload refused, the previous pair is still served: {e}"
            ),
        }
    }

    /// Reloads whichever of the files changed since they were last looked
    /// at (the watcher every [`CHECK_EVERY`], and `SIGHUP`); each change is
    /// loaded (and, when bad, logged) once. Reads files: call it off the
    /// async threads.
    pub fn check_now(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = fingerprint(&self.files);
        if (&now.0, &now.1) != (&seen.0, &seen.1) {
            self.reload();
        }
        if now.2 != seen.2 {
            self.reload_client_ca();
        }
        *seen = now;
    }

    /// Checks the files every [`CHECK_EVERY`] ([`Tls::check_now`]). Ends
    /// with the server (`stopped`).
    pub async fn watch(self, mut stopped: tokio::sync::watch::Receiver<()>) {
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => return,
            }
            let tls = self.clone();
            // A few stats and small reads: off the async threads.
            if let Err(e) = tokio::task::spawn_blocking(move || tls.check_now()).await {
                tracing::error!("TLS certificate check failed: {e}");
            }
        }
    }
}

/// What a pair holds, for its reload's log line: the first certificate's
/// subject and end of validity, and the chain's length.
fn describe(pair: &CertifiedKey) -> String {
    let Some(first) = pair.cert.first() else {
        return "no certificate".into();
    };
    match x509_parser::parse_x509_certificate(first) {
        Ok((_, cert)) => format!(
            "subject {}, valid until {}, {} certificates in the chain",
            cert.subject(),
            cert.validity().not_after,
            pair.cert.len()
        ),
        Err(_) => format!("{} certificates in the chain", pair.cert.len()),
    }
}

/// Sizes and modification times of the files: what the watcher compares.
fn fingerprint(tls: &TlsConfig) -> Files {
    (
        Fingerprint::of_file(&tls.cert),
        Fingerprint::of_file(&tls.key),
        tls.client_ca.as_deref().map(Fingerprint::of_file),
    )
}

/// Paths of a pair in a key directory: `tls.crt` and `tls.key`.
pub fn pair_paths(key_dir: &Path) -> (PathBuf, PathBuf) {
    (key_dir.join("tls.crt"), key_dir.join("tls.key"))
}
