//! A real OpenID provider for the tests: the npm package `oidc-provider`
//! (an OpenID Certified implementation) run by Node from
//! `tests/oidc/provider.mjs`, with the configuration the test gives it, on
//! an ephemeral port, and the test's own ES256 signing key, so that a test
//! can also sign tokens as the provider would (expired, for another
//! audience …) or as an attacker would (another key, no signature).
//!
//! Facts this harness relies on (oidc-provider 9.x on Node 20, which it
//! runs on with a warning that it wants Node 22):
//!
//! - The issuer is `http://127.0.0.1:PORT` (no trailing slash), the
//!   authorization endpoint `/auth`, the token endpoint `/token`, the key
//!   set `/jwks`; discovery is at `/.well-known/openid-configuration`.
//! - `provider.mjs` prints `listening PORT` once it serves; the harness
//!   waits for that line. Node sets `SO_REUSEADDR`, so a provider started
//!   again on the port of a stopped one (a key rotation) gets it at once.
//! - The authorization-code flow: `/auth` answers 303 to
//!   `/interaction/UID`, which (with a `login_hint` naming an account)
//!   signs the account in and answers 303 to `/auth/UID`, which answers
//!   303 to the redirect URI with `code`. Each step sets cookies that the
//!   next must send. The token request (client_secret_basic, with the PKCE
//!   verifier) answers the `id_token`, signed ES256 with the key's `kid`,
//!   its `aud` the client id, and the requested scopes' claims in it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use data_encoding::BASE64URL_NOPAD;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::clients::terminate;

/// The redirect URI of the tests' programmatic clients: never reached, the
/// code is read from the `Location` that points at it.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// An ES256 signing key, as the provider holds it (a private JWK) and as a
/// test signs with it.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
    d: String,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .expect("key");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // An uncompressed point: 0x04, x, y.
        let point = pair.public_key().as_ref().to_vec();
        let d: aws_lc_rs::encoding::EcPrivateKeyBin = pair.private_key().as_be_bytes().unwrap();
        Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            x: BASE64URL_NOPAD.encode(&point[1..33]),
            y: BASE64URL_NOPAD.encode(&point[33..]),
            d: BASE64URL_NOPAD.encode(d.as_ref()),
        }
    }

    fn private_jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "d": self.d,
               "kid": self.kid, "alg": "ES256", "use": "sig"})
    }

    /// The public key, as a JWK.
    pub fn public_jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
               "kid": self.kid, "alg": "ES256", "use": "sig"})
    }

    /// The public key's bytes (what an HMAC keyed "with the public key"
    /// would use).
    pub fn public_bytes(&self) -> Vec<u8> {
        let mut bytes = BASE64URL_NOPAD.decode(self.x.as_bytes()).unwrap();
        bytes.extend(BASE64URL_NOPAD.decode(self.y.as_bytes()).unwrap());
        bytes
    }

    /// A token with these claims, signed ES256 with this key under `header`
    /// (its `alg` and `kid` are set here).
    pub fn sign_with_header(&self, mut header: jsonwebtoken::Header, claims: &Value) -> String {
        header.alg = jsonwebtoken::Algorithm::ES256;
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8);
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(jsonwebtoken::Header::default(), claims)
    }
}

/// A relying party the provider knows.
pub struct ClientApp {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
}

impl ClientApp {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            secret: format!("{id}-secret"),
            redirect_uris: vec![REDIRECT_URI.to_owned()],
        }
    }
}

pub struct Provider {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    pub issuer: String,
    config: Value,
}

/// Where `provider.mjs` and its `node_modules` are.
fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Provider {
    /// Starts a provider signing with `key`, knowing `clients`, and whose
    /// accounts have these claims (`sub` is the account's name).
    pub fn start(key: &SigningKey, clients: &[ClientApp], accounts: BTreeMap<&str, Value>) -> Self {
        let config = json!({
            "port": 0,
            "jwks": {"keys": [key.private_jwk()]},
            "clients": clients.iter().map(|c| json!({
                "client_id": c.id,
                "client_secret": c.secret,
                "redirect_uris": c.redirect_uris,
                "id_token_signed_response_alg": "ES256",
            })).collect::<Vec<_>>(),
            "accounts": accounts,
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut provider = Self {
            child: None,
            dir,
            port: 0,
            issuer: String::new(),
            config,
        };
        provider.launch();
        provider
    }

    fn launch(&mut self) {
        let modules = provider_dir().join("node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "{} is missing: run `npm ci` in tests/oidc (scripts/install-test-deps.sh does)",
            modules.display()
        );
        let config_file = self.dir.path().join("provider.json");
        self.config["port"] = json!(self.port);
        std::fs::write(&config_file, self.config.to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("provider.log"))
            .unwrap();
        let mut child = Command::new("node")
            .arg(provider_dir().join("provider.mjs"))
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("node runs (scripts/install-test-deps.sh installs it)");
        // The one line it prints, once it serves; a provider that dies
        // first ends its output, and the line is missing.
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // What it prints later (notices) goes to its log: a closed pipe
        // would kill it at its next line.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("provider.log"))
            .unwrap();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut log));
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("the provider did not start: {}", self.log()));
        self.port = port;
        self.issuer = format!("http://127.0.0.1:{port}");
        self.child = Some(child);
    }

    /// Stops it (the port stays this provider's for [`Provider::restart`]).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            assert!(terminate(child, Duration::from_secs(10)), "provider stops");
        }
    }

    /// Starts it again on the same port, signing with `key` alone: a key
    /// rotation.
    pub fn restart_with(&mut self, key: &SigningKey) {
        self.stop();
        self.config["jwks"] = json!({"keys": [key.private_jwk()]});
        self.launch();
    }

    /// Registers `uri` as a redirect URI of client `id` (a relying party
    /// whose address is known only once it runs), restarting on the same
    /// port with the same keys.
    pub fn register_redirect(&mut self, id: &str, uri: &str) {
        self.stop();
        let clients = self.config["clients"].as_array_mut().unwrap();
        let client = clients.iter_mut().find(|c| c["client_id"] == id).unwrap();
        client["redirect_uris"]
            .as_array_mut()
            .unwrap()
            .push(json!(uri));
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// An ID token for `account`, from the authorization-code flow with
    /// PKCE, as a relying party gets it: `scope` beyond `openid` picks the
    /// claims it carries.
    pub async fn id_token(&self, client: &ClientApp, account: &str, scope: &str) -> String {
        use sha2::Digest as _;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let verifier = BASE64URL_NOPAD
            .encode(uuid::Uuid::new_v4().as_bytes())
            .repeat(2);
        let challenge = BASE64URL_NOPAD.encode(&sha2::Sha256::digest(verifier.as_bytes()));
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &client.id)
            .append_pair("response_type", "code")
            .append_pair("scope", &format!("openid {scope}"))
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("login_hint", account)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "state-1")
            .append_pair("nonce", "nonce-1")
            .finish();
        let mut url = format!("{}/auth?{query}", self.issuer);
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let code = 'flow: {
            for _ in 0..10 {
                let cookie = cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let response = http
                    .get(&url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                for set in response.headers().get_all("set-cookie") {
                    let pair = set.to_str().unwrap().split(';').next().unwrap();
                    if let Some((k, v)) = pair.split_once('=') {
                        cookies.insert(k.to_owned(), v.to_owned());
                    }
                }
                let location = response
                    .headers()
                    .get("location")
                    .unwrap_or_else(|| panic!("no redirect from {url}: {}", response.status()))
                    .to_str()
                    .unwrap()
                    .to_owned();
                if let Some(query) = location.strip_prefix(&format!("{REDIRECT_URI}?")) {
                    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect();
                    match params.get("code") {
                        Some(code) => break 'flow code.clone(),
                        None => panic!("the provider refused the sign-in: {location}"),
                    }
                }
                url = if location.starts_with('/') {
                    format!("{}{location}", self.issuer)
                } else {
                    location
                };
            }
            panic!("the sign-in did not end in a redirect with a code");
        };
        let response = http
            .post(format!("{}/token", self.issuer))
            .basic_auth(&client.id, Some(&client.secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier.as_str()),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}; the provider's log:\n{}", self.log()));
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "token request: {status} {body}");
        body["id_token"].as_str().expect("an id_token").to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}
