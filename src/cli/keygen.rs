//! `portcullis keygen`: a new token signing key, and the later steps of a
//! rotation (`--activate`, `--retire`).
//!
//! A new key goes on standby when the directory already has a signing key:
//! a registry that trusts Portcullis reads `bundle.crt` only at its start,
//! so the new certificate must reach it before the new key signs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use portcullis::auth::keys::{self, KeyError, KeyKind, KeyRing, TokenKey};

use super::{Failure, load_config};

#[derive(Args)]
pub struct KeygenArgs {
    /// Configuration file; its `token.key_dir` and `token.key_type` are the defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Key directory, overriding the configuration.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Key type, overriding the configuration.
    #[arg(long = "type", value_name = "TYPE", value_parser = ["es256", "rs256"])]
    key_type: Option<String>,
    /// Make the new key sign at once instead of putting it on standby (an
    /// emergency: trusting registries refuse its tokens until they have the new bundle).
    #[arg(long, conflicts_with_all = ["activate", "retire"])]
    now: bool,
    /// Make the newest standby key the signing one (a running Portcullis takes it up within a second).
    #[arg(long, conflicts_with_all = ["retire", "key_type"])]
    activate: bool,
    /// Remove every key older than the signing one (standby keys stay) and rewrite the bundle.
    #[arg(long, conflicts_with = "key_type")]
    retire: bool,
    /// Instead of a token key: a self-signed TLS pair for trials,
    /// `tls.crt` and `tls.key` in the key directory.
    #[arg(long, conflicts_with_all = ["now", "activate", "retire", "key_type"])]
    tls: bool,
    /// A host name or IP address the TLS certificate is for (repeatable;
    /// `localhost` and `127.0.0.1` are always included).
    #[arg(long, value_name = "HOST", requires = "tls")]
    name: Vec<String>,
    /// Replace an existing TLS pair.
    #[arg(long, requires = "tls")]
    force: bool,
}

pub fn run(args: KeygenArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.config.as_deref())?;
    let dir = args.dir.unwrap_or(config.token.key_dir);
    if args.tls {
        return tls_pair(&dir, &args.name, args.force);
    }
    if args.activate {
        return activate(&dir);
    }
    if args.retire {
        return retire(&dir);
    }
    let type_name = args.key_type.unwrap_or(config.token.key_type);
    let kind = KeyKind::parse(&type_name)
        .ok_or_else(|| Failure::setup(format!("unknown key type `{type_name}`")))?;
    // Standby unless nothing signs yet: a first key has no tokens to keep
    // valid, and a standby one would leave the server without a signer.
    let standby = !args.now && has_signer(&dir)?;
    let key_path = if standby {
        keys::generate_standby(&dir, kind)
    } else {
        keys::generate(&dir, kind)
    }
    .map_err(Failure::refused)?;
    println!(
        "new {} key: {}",
        type_name.to_ascii_lowercase(),
        key_path.display()
    );
    println!("certificate: {}", key_path.with_extension("crt").display());
    let ring = reload(&dir, "the new key was written")?;
    let key = find(&ring, &key_path)?;
    print_bundle(&dir, &ring);
    print_ids(key);
    if standby {
        println!(
            "The new key is on standby: it verifies and is in the bundle, but {} keeps signing.",
            ring.signer().file.display()
        );
        println!("Next:");
        println!(
            "  1. give {} to every registry that trusts Portcullis and restart it (distribution reads it at start);",
            dir.join("bundle.crt").display()
        );
        println!(
            "  2. run `portcullis keygen --activate`: a running Portcullis signs with the new key within a second (or at once on SIGHUP);"
        );
        println!(
            "  3. once the old key's tokens have expired, run `portcullis keygen --retire` and hand out the bundle again."
        );
    } else if ring.signer().file == key_path {
        println!(
            "The newest key signs new tokens; older keys in {} keep verifying tokens until their .key and .crt files are removed.",
            dir.display()
        );
        if ring.keys().len() > 1 {
            println!(
                "A running Portcullis signs with it within a second; registries that trust Portcullis refuse its tokens until they have the new bundle."
            );
        }
    } else {
        note_later_signer(&ring, "the new key");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `dir` already has a key that signs. A missing or empty
/// directory has none; one that does not load is refused before anything
/// is written to it.
fn has_signer(dir: &Path) -> Result<bool, Failure> {
    match KeyRing::load(dir) {
        Ok(_) => Ok(true),
        Err(KeyError::NoKey(_)) => Ok(false),
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(Failure::refused(format!(
            "{e} (`portcullis keygen --now` writes a signing key anyway)"
        ))),
    }
}

fn activate(dir: &Path) -> Result<ExitCode, Failure> {
    let key_path = keys::activate(dir).map_err(Failure::refused)?;
    println!("activated: {}", key_path.display());
    let ring = reload(dir, "the key was activated")?;
    print_ids(find(&ring, &key_path)?);
    if ring.signer().file == key_path {
        println!(
            "A running Portcullis signs new tokens with it within a second (at once on SIGHUP); every registry that trusts Portcullis must already have the bundle that holds its certificate."
        );
        println!(
            "Older keys keep verifying; once their tokens have expired, run `portcullis keygen --retire`."
        );
    } else {
        note_later_signer(&ring, "the activated key");
    }
    Ok(ExitCode::SUCCESS)
}

fn retire(dir: &Path) -> Result<ExitCode, Failure> {
    let retired = keys::retire(dir).map_err(Failure::refused)?;
    let ring = reload(dir, "the old keys were removed")?;
    if retired.is_empty() {
        println!(
            "nothing to retire: {} is the only active key",
            ring.signer().file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for key in &retired {
        println!("retired: {} (and its .crt)", key.display());
    }
    print_bundle(dir, &ring);
    println!(
        "Within a second (at once on SIGHUP), tokens the retired keys signed no longer verify at a running Portcullis, refresh tokens (`docker login`) included. Give the new bundle to the registries that trust Portcullis."
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads the ring as the server will: what was just done must leave a
/// directory the server can start from.
fn reload(dir: &Path, done: &str) -> Result<KeyRing, Failure> {
    KeyRing::load(dir)
        .map_err(|e| Failure::refused(format!("{done}, but the key directory does not load: {e}")))
}

fn find<'a>(ring: &'a KeyRing, key_path: &Path) -> Result<&'a TokenKey, Failure> {
    ring.keys()
        .iter()
        .find(|k| k.file == key_path)
        .ok_or_else(|| Failure::refused("the key is missing from the key directory"))
}

fn print_bundle(dir: &Path, ring: &KeyRing) {
    let count = ring.keys().len();
    let plural = if count == 1 { "" } else { "s" };
    println!(
        "bundle: {} ({count} certificate{plural})",
        dir.join("bundle.crt").display()
    );
}

fn print_ids(key: &TokenKey) {
    println!("key id (libtrust, distribution 2.8): {}", key.libtrust_id);
    println!(
        "thumbprint (RFC 7638, distribution 3.x and JWKS): {}",
        key.thumbprint
    );
}

/// A key file named later than `what` (a clock set back, or a hand-named
/// file) keeps signing.
fn note_later_signer(ring: &KeyRing, what: &str) {
    println!(
        "Note: {} sorts after {what} and keeps signing; remove it to sign with {what}.",
        ring.signer().file.display()
    );
}

/// `keygen --tls`: writes the pair and says what to do with it.
fn tls_pair(dir: &Path, names: &[String], force: bool) -> Result<ExitCode, Failure> {
    let written =
        portcullis::serve::selfsigned::generate(dir, names, force).map_err(|e| match e {
            portcullis::serve::selfsigned::SelfSignedError::Exists(_) => Failure::refused(e),
            other => Failure::setup(other.to_string()),
        })?;
    let cert = std::path::absolute(&written.cert).unwrap_or(written.cert.clone());
    let key = std::path::absolute(&written.key).unwrap_or(written.key.clone());
    println!("self-signed TLS certificate: {}", cert.display());
    println!("private key (owner only): {}", key.display());
    println!("names: {}", written.names.join(", "));
    println!("Serve with it:");
    println!(
        "  [server.tls] cert = {:?}, key = {:?}  (or serve --tls-cert {} --tls-key {})",
        cert.display().to_string(),
        key.display().to_string(),
        cert.display(),
        key.display()
    );
    println!("Clients trust it as their CA (the certificate itself):");
    println!(
        "  docker: copy it to /etc/docker/certs.d/<host:port>/ca.crt on each client (no restart needed)"
    );
    println!(
        "  podman, skopeo, buildah: a directory holding it as ca.crt, given as --cert-dir (or /etc/containers/certs.d/<host:port>/ca.crt)"
    );
    println!("  curl: --cacert {}", cert.display());
    Ok(ExitCode::SUCCESS)
}
