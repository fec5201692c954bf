//! `portcullis keygen`: a new token signing key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use portcullis::auth::keys::{self, KeyKind, KeyRing};

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
}

pub fn run(args: KeygenArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.config.as_deref())?;
    let dir = args.dir.unwrap_or(config.token.key_dir);
    let type_name = args.key_type.unwrap_or(config.token.key_type);
    let kind = KeyKind::parse(&type_name)
        .ok_or_else(|| Failure::setup(format!("unknown key type `{type_name}`")))?;
    let key_path = keys::generate(&dir, kind).map_err(Failure::refused)?;
    println!(
        "new {} key: {}",
        type_name.to_ascii_lowercase(),
        key_path.display()
    );
    println!("certificate: {}", key_path.with_extension("crt").display());
    // Loading the ring reads the key back as the server will, and gives its ids.
    let ring = KeyRing::load(&dir).map_err(|e| {
        Failure::refused(format!(
            "the new key was written, but the key directory does not load: {e}"
        ))
    })?;
    let key = ring
        .keys()
        .iter()
        .find(|k| k.file == key_path)
        .ok_or_else(|| Failure::refused("the new key is missing from the key directory"))?;
    let count = ring.keys().len();
    let plural = if count == 1 { "" } else { "s" };
    println!(
        "bundle: {} ({count} certificate{plural})",
        dir.join("bundle.crt").display()
    );
    println!("key id (libtrust, distribution 2.8): {}", key.libtrust_id);
    println!(
        "thumbprint (RFC 7638, distribution 3.x and JWKS): {}",
        key.thumbprint
    );
    if ring.signer().file == key_path {
        println!(
            "The newest key signs new tokens; older keys in {} keep verifying tokens until their .key and .crt files are removed.",
            dir.display()
        );
    } else {
        // A key file named later than the new one (a clock set back, or a
        // hand-named file) would keep signing.
        println!(
            "Note: {} sorts after the new key and keeps signing; remove it to sign with the new key.",
            ring.signer().file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
