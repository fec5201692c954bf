//! Certificate authorities for TLS tests: a CA written as a PEM file (what
//! `server.tls.client_ca` names, or what a client is told to trust) and the
//! pairs it signs, client or server, each as a certificate file and a key
//! file (PKCS#8 PEM, ECDSA P-256), as programs take them.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA whose certificate is `<dir>/<name>-ca.crt`.
pub struct TestCa {
    pub cert: PathBuf,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A client certificate and its key, as PEM files.
pub struct ClientPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientPair {
    pub fn cert_pem(&self) -> Vec<u8> {
        fs::read(&self.cert).expect("read client certificate")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        fs::read(&self.key).expect("read client key")
    }
}

/// A server certificate and its key: the same two files as a client's.
pub type ServerPair = ClientPair;

/// How long a client certificate is valid, around now.
pub enum Validity {
    Current,
    /// Ended a day ago.
    Expired,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> Self {
        fs::create_dir_all(dir).expect("create CA dir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} test CA"));
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).expect("self-sign CA");
        let pem = cert.pem();
        let path = dir.join(format!("{name}-ca.crt"));
        fs::write(&path, &pem).expect("write CA");
        Self {
            cert: path,
            pem,
            issuer: Issuer::new(params, key),
            dir: dir.to_owned(),
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A client certificate for subject `CN=<cn>, O=Portcullis tests` (no
    /// CN when `cn` is `None`), written as `<stem>.crt` and `<stem>.key`.
    pub fn issue(&self, stem: &str, cn: Option<&str>, validity: Validity) -> ClientPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        dn.push(DnType::OrganizationName, "Portcullis tests");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(stem, params, validity)
    }

    /// A server certificate for `names` (subject alternative names: an IP
    /// address where one parses, a DNS name otherwise; the first is also
    /// the CN), valid around now for server authentication, written as
    /// `<stem>.crt` and `<stem>.key`.
    pub fn issue_server(&self, stem: &str, names: &[&str]) -> ServerPair {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("server params");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        dn.push(DnType::OrganizationName, "Portcullis tests");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(stem, params, Validity::Current)
    }

    /// Signs `params` over a fresh key for `validity`, written as
    /// `<stem>.crt` and `<stem>.key`.
    fn sign(&self, stem: &str, mut params: CertificateParams, validity: Validity) -> ClientPair {
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (now - day, now + day * 30),
            Validity::Expired => (now - day * 30, now - day),
        };
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = ClientPair {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        fs::write(&pair.cert, cert.pem()).expect("write certificate");
        fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}
