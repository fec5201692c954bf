//! A self-signed certificate pair for trials (`portcullis keygen --tls`):
//! `tls.crt` and `tls.key` in the key directory, the certificate naming the
//! hosts given plus `localhost` and `127.0.0.1`, so that clients can trust
//! the certificate itself as their CA.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

/// Why no pair was written.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("{} already exists (give --force to replace the pair)", .0.display())]
    Exists(PathBuf),
    #[error("invalid name {name:?} for the certificate: {reason}")]
    Name { name: String, reason: String },
    #[error("cannot generate the certificate: {0}")]
    Generate(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The names every generated certificate carries besides those asked for:
/// what a client on the same machine connects to.
const ALWAYS: [&str; 2] = ["localhost", "127.0.0.1"];

/// The pair written: certificate and key paths, and the names it covers.
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

/// Generates a pair for `names` (plus [`ALWAYS`]) into `dir`, refusing to
/// replace an existing one unless `force`. Each file is written whole under a
/// temporary name and renamed into place, so a server reloading the pair
/// never reads half a file; the key is readable by its owner only.
pub fn generate(dir: &Path, names: &[String], force: bool) -> Result<Written, SelfSignedError> {
    let (cert_path, key_path) = super::tls::pair_paths(dir);
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(SelfSignedError::Exists(path.clone()));
            }
        }
    }
    let mut all: Vec<String> = Vec::new();
    for name in names.iter().map(String::as_str).chain(ALWAYS) {
        if !all.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            all.push(name.to_owned());
        }
    }
    let generate_err = |e: rcgen::Error| SelfSignedError::Generate(e.to_string());
    let mut params = CertificateParams::new(all.clone()).map_err(|e| SelfSignedError::Name {
        name: all.join(", "),
        reason: e.to_string(),
    })?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, all[0].as_str());
    params.distinguished_name = subject;
    // From an hour ago (clients' clocks drift) for a year: a trial pair,
    // replaced by a real certificate before long.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate().map_err(generate_err)?;
    let cert = params.self_signed(&key).map_err(generate_err)?;

    std::fs::create_dir_all(dir).map_err(|source| SelfSignedError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        names: all,
    })
}

/// Writes `content` to a temporary file beside `path` with `mode`, syncs it
/// and renames it over `path`.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), SelfSignedError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let tmp = path.with_file_name(tmp_name);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SelfSignedError::Io { path, source }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(content)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}
