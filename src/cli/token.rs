//! `portcullis token`: personal access tokens (`create`, `list`, `revoke
//! --name`) and the revocation of refresh (identity) tokens (`revoke`).
//! Registry access tokens are short-lived and not revoked; they expire
//! within `token.lifetime_secs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis::auth::Revocations;
use portcullis::auth::access_tokens::{self, NewToken, TokenScope};

use super::{Failure, load_config};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Makes a personal access token for a user (or robot account), to use
    /// as the password of `docker login`. It is shown once; only its hash
    /// is kept.
    Create(CreateArgs),
    /// Lists personal access tokens: owner, name, scopes, expiry, last use.
    List(ListArgs),
    /// With `--name`, revokes that personal access token of `--user`, at
    /// once on every replica. Without it, voids refresh tokens issued until
    /// now: one user's, or everyone's (clients holding them, `docker
    /// login`'s identity token, must log in again).
    Revoke(RevokeArgs),
}

/// Where tokens are kept: the configuration's storage, or another
/// directory.
#[derive(Args)]
struct StorageArgs {
    /// Configuration file (for the storage location and identity sources).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Storage directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The owner: a user or robot account the identity sources know.
    #[arg(long)]
    user: String,
    /// Narrows the token to REPO_GLOB:ACTIONS (e.g. `ci/**:pull,push`;
    /// repeat for several). Without one it may do what its owner's policy
    /// allows; with them, never more than that either.
    #[arg(long = "scope", value_name = "REPO_GLOB:ACTIONS")]
    scopes: Vec<String>,
    /// How long it lives: `12h`, `30d`, `8w`, or `never`.
    #[arg(long, default_value = "30d")]
    expires: String,
    /// Its name, unique among the owner's tokens (for `list` and `revoke`).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this user's tokens.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
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
    /// The personal access token of `--user` to revoke, by name.
    #[arg(long, requires = "user")]
    name: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
}

pub fn run(command: TokenCommand) -> Result<ExitCode, Failure> {
    match command {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List(args) => list(args),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::refused)
}

/// `12h`, `30d`, `8w` as seconds; `never` as `None`.
fn lifetime(text: &str) -> Result<Option<u64>, Failure> {
    if text == "never" {
        return Ok(None);
    }
    let bad = || {
        Failure::refused(format!(
            "--expires `{text}`: use e.g. 12h, 30d, 8w or never"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (count, unit) = text.split_at(split);
    let count: u64 = count.parse().map_err(|_| bad())?;
    let unit = match unit {
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match count.checked_mul(unit) {
        Some(secs) if secs > 0 => Ok(Some(secs)),
        _ => Err(bad()),
    }
}

fn create(args: CreateArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.storage.config.as_deref())?;
    let scopes = args
        .scopes
        .iter()
        .map(|s| TokenScope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::refused)?;
    let lifetime = lifetime(&args.expires)?;
    let name = args.name.unwrap_or_else(|| "default".to_owned());
    access_tokens::check_name(&name).map_err(Failure::refused)?;
    // The owner must exist now: a token for no one would be refused anyway.
    let owner = super::identity::resolve(&config, &args.user)?;
    runtime()?.block_on(async {
        let storage = super::open_storage(&config.storage, args.storage.data_dir).await?;
        let expires = lifetime.map(|secs| portcullis::auth::token::now() + secs);
        let new = NewToken {
            owner: &owner,
            name: &name,
            scopes: &scopes,
            expires,
        };
        let created = access_tokens::create(&storage, new)
            .await
            .map_err(Failure::refused)?;
        // The token alone on stdout, so that `$(portcullis token create …)`
        // captures it; what it is on stderr.
        println!("{}", created.token);
        eprintln!(
            "token `{name}` of {} (expires {}); it is shown only now: use it as the password of `docker login`",
            owner.name,
            when(created.record.expires),
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn list(args: ListArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.storage.config.as_deref())?;
    runtime()?.block_on(async {
        let storage = super::open_storage(&config.storage, args.storage.data_dir).await?;
        let all = access_tokens::list(&storage)
            .await
            .map_err(Failure::refused)?;
        let now = portcullis::auth::token::now();
        println!("USER\tNAME\tSCOPES\tCREATED\tEXPIRES\tLAST USED");
        for (id, record) in all {
            if args.user.as_ref().is_some_and(|u| *u != record.user) {
                continue;
            }
            let used = storage
                .access_token_used(&id)
                .await
                .map_err(Failure::refused)?;
            let scopes = match record.scopes.is_empty() {
                true => "(the user's policy)".to_owned(),
                false => record.scopes.join(" "),
            };
            let expires = match record.expired(now) {
                true => format!("expired {}", when(record.expires)),
                false => when(record.expires),
            };
            println!(
                "{}\t{}\t{scopes}\t{}\t{expires}\t{}",
                record.user,
                record.name,
                when(Some(record.created)),
                used.map_or_else(|| "never".to_owned(), |t| when(Some(t))),
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A time as RFC 3339 (UTC); `None` as `never`.
fn when(at: Option<u64>) -> String {
    at.map_or_else(|| "never".to_owned(), portcullis::auth::token::rfc3339)
}

fn revoke(args: RevokeArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.storage.config.as_deref())?;
    runtime()?.block_on(async {
        let storage = super::open_storage(&config.storage, args.storage.data_dir).await?;
        if let (Some(name), Some(user)) = (&args.name, &args.which.user) {
            let found = access_tokens::revoke(&storage, user, name)
                .await
                .map_err(Failure::refused)?;
            if !found {
                return Err(Failure::refused(format!(
                    "{user} has no token named `{name}`"
                )));
            }
            println!("revoked the access token `{name}` of {user}");
            return Ok(ExitCode::SUCCESS);
        }
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
