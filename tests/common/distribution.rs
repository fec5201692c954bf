//! The configuration of distribution 2.8 (Debian's `docker-registry`) as the
//! interoperability tests and the benchmark run it: filesystem storage with
//! deletes enabled, trusting the bearer tokens Portcullis issues.
//!
//! Self-contained on purpose (no other `tests/common` item): the benchmark
//! includes this file with `#[path]`.
#![allow(dead_code)]

use std::path::Path;

/// What differs between the registries the tests and the benchmark start.
pub struct TokenRegistry<'a> {
    /// The `log:` section's lines, indented by two spaces, e.g.
    /// `"  level: info\n  formatter: text\n"`.
    pub log: &'a str,
    /// `host:port` to listen on (port 0: distribution logs the one it bound,
    /// at level info).
    pub addr: &'a str,
    /// Signs distribution's upload state; any string.
    pub secret: &'a str,
    pub root: &'a Path,
    /// Where clients are sent for a token: Portcullis' `/token`.
    pub realm: &'a str,
    pub service: &'a str,
    pub issuer: &'a str,
    /// The certificates of the keys Portcullis signs with.
    pub bundle: &'a Path,
}

impl TokenRegistry<'_> {
    /// The configuration file's text (YAML).
    pub fn yaml(&self) -> String {
        format!(
            "version: 0.1\n\
             log:\n{log}\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: {secret}\n\
             {auth}",
            log = self.log,
            root = self.root.display(),
            addr = self.addr,
            secret = self.secret,
            auth = self.auth_yaml(),
        )
    }

    /// Its `auth:` section alone (realm, service, issuer, bundle).
    pub fn auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n\
             \x20   realm: {realm}\n\
             \x20   service: {service}\n\
             \x20   issuer: {issuer}\n\
             \x20   rootcertbundle: {bundle}\n",
            realm = self.realm,
            service = self.service,
            issuer = self.issuer,
            bundle = self.bundle.display(),
        )
    }
}
