//! HTTPS: the rustls acceptor, the certificate pair it serves from PEM files,
//! and their reload while the server runs.
//!
//! The pair sits behind a certificate resolver that every handshake asks, so
//! a reload changes what *new* handshakes get and nothing else: a connection
//! keeps the session it negotiated with the old pair until it ends. A new
//! pair that cannot be read, or whose key is not the certificate's, is
//! refused with one log line and the old pair stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::auth::reload::{CHECK_EVERY, Fingerprint};
use crate::config::TlsConfig;

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

/// The pair new handshakes get.
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("current certificate pair")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// The TLS side of a listener: the acceptor, and the files it reloads from.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
    files: TlsConfig,
    /// The files' fingerprint as they were loaded at start: the watcher
    /// compares against it, so an edit made before its first look counts.
    loaded: (Fingerprint, Fingerprint),
}

impl Tls {
    /// Loads the pair `tls` names; TLS 1.2 and 1.3 only, ALPN `h2` then
    /// `http/1.1` (hyper's auto builder serves whichever was chosen).
    pub fn new(tls: &TlsConfig) -> Result<Self, TlsError> {
        let loaded = fingerprint(tls);
        let pair = load_pair(tls)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(pair))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
            files: tls.clone(),
            loaded,
        })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again and, when they make a good pair, serves it to
    /// new handshakes; otherwise logs why and keeps the pair served now.
    fn reload(&self) {
        match load_pair(&self.files) {
            Ok(pair) => {
                *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded: new connections get the new pair"
                );
            }
            Err(e) => tracing::error!(
                "TLS certificate reload refused, the previous pair is still served: {e}"
            ),
        }
    }

    /// Checks the files every [`CHECK_EVERY`] and reloads them when their
    /// size or modification time changed; each change is loaded (and, when
    /// bad, logged) once. Ends with the server (`stopped`).
    pub async fn watch(self, mut stopped: tokio::sync::watch::Receiver<()>) {
        let mut seen = self.loaded.clone();
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => return,
            }
            let tls = self.clone();
            let before = seen.clone();
            // A few stats and small reads: off the async threads.
            let checked = tokio::task::spawn_blocking(move || {
                let now = fingerprint(&tls.files);
                if now != before {
                    tls.reload();
                }
                now
            })
            .await;
            match checked {
                Ok(now) => seen = now,
                Err(e) => tracing::error!("TLS certificate check failed: {e}"),
            }
        }
    }
}

/// Sizes and modification times of the two files: what the watcher compares.
fn fingerprint(tls: &TlsConfig) -> (Fingerprint, Fingerprint) {
    (
        Fingerprint::of_file(&tls.cert),
        Fingerprint::of_file(&tls.key),
    )
}

/// Paths of a pair in a key directory: `tls.crt` and `tls.key`.
pub fn pair_paths(key_dir: &Path) -> (PathBuf, PathBuf) {
    (key_dir.join("tls.crt"), key_dir.join("tls.key"))
}
