//! `portcullis token revoke`: voids refresh (identity) tokens. Access tokens
//! are short-lived and not revoked; they expire within `token.lifetime_secs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis::auth::Revocations;

use super::{Failure, load_config};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Voids refresh tokens issued until now: one user's, or everyone's.
    /// Clients holding them (`docker login`'s identity token) must log in again.
    Revoke(RevokeArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// Revoke this user's refresh tokens.
    #[arg(long)]
    user: Option<String>,
    /// Revoke every refresh token.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    which: Which,
    /// Configuration file (for the storage location).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Storage directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(command: TokenCommand) -> Result<ExitCode, Failure> {
    match command {
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn revoke(args: RevokeArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::refused)?;
    runtime.block_on(async {
        let storage = super::open_storage(&config.storage, args.data_dir).await?;
        Revocations::update(&storage, |revocations| match &args.which.user {
            Some(user) => revocations.revoke_user(user),
            None => revocations.revoke_all(),
        })
        .await
        .map_err(Failure::refused)?;
        match &args.which.user {
            Some(user) => println!("revoked the refresh tokens of {user} issued until now"),
            None => println!("revoked every refresh token issued until now"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
