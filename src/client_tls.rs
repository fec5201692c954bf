//! The TLS side of Portcullis' own outgoing connections (upstream
//! registries, OpenID issuers): one rustls configuration with the one crypto
//! provider, trusting the system's roots or a configured CA file.

use std::path::Path;
use std::sync::Arc;

/// The rustls client configuration: `ca` alone when given, else the
/// system's roots; the one crypto provider.
pub fn config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file {}: no certificate in the file",
                    ca.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        None => {
            // Certificates the system store holds but rustls cannot read
            // are skipped, as browsers skip them.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
