//! The TLS side of Portcullis' own outgoing connections (upstream
//! registries, OpenID issuers): one rustls configuration with the one crypto
//! provider, trusting the system's roots or a configured CA file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

/// An outgoing connector: TCP with `timeout` to connect and no Nagle
/// delay, TLS by [`config`], HTTP/1.1 and HTTP/2 (by ALPN); plain http too
/// unless `https_only`.
pub fn connector(
    ca: Option<&Path>,
    timeout: Duration,
    https_only: bool,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config(ca)?);
    let builder = if https_only {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    Ok(builder.enable_http1().enable_http2().wrap_connector(http))
}

/// An error of an outgoing request and its causes on one line: hyper's
/// own message alone ("client error (Connect)") does not say what went
/// wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

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
