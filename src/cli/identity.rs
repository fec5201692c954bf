//! `portcullis identity test USER`: a login through the identity chain, as
//! `serve` would make it, told in full: which source answered, the name and
//! groups it vouched for, and what the policy grants on a repository. A
//! wrong directory configuration is the most common question about a
//! registry's logins; this answers it without a client or a server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use portcullis::auth::identity::{Chain, Identity, Login};
use portcullis::auth::scope::Action;
use portcullis::config::{Config, GroupsFrom, LdapConfig, Nested};
use portcullis::policy::Policy;

use super::{Failure, load_config, password};

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Logs USER in through the configured sources (the password from a
    /// prompt, or one line of stdin) and prints which source answered, the
    /// groups found and, with --repo, what the policy grants there.
    #[command(after_help = "\
Exit status: 0 when the login succeeds, 1 when it is refused, 2 when the
configuration is invalid or a source cannot be reached.

Examples:
  portcullis identity test alice
  echo \"$PASSWORD\" | portcullis identity test alice --repo team/app")]
    Test(TestArgs),
}

#[derive(Args)]
pub struct TestArgs {
    /// The user name, as a client would send it.
    user: String,
    /// A repository to show the policy's grant on (pull, push, delete).
    #[arg(long, value_name = "REPO")]
    repo: Option<String>,
    /// Configuration file (the one `serve` would read otherwise).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// The identity chain `serve` would build from `config`.
fn chain(config: &Config) -> Result<Chain, Failure> {
    let users = portcullis::auth::watched_users(&config.users.file).map_err(Failure::setup)?;
    portcullis::auth::identity_chain(config, Arc::new(users)).map_err(Failure::setup)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::setup)
}

/// `user` as the identity sources have it now, without a password
/// (`policy explain --resolve`).
pub fn resolve(config: &Config, user: &str) -> Result<Identity, Failure> {
    let chain = chain(config)?;
    runtime()?
        .block_on(chain.lookup(user))
        .map_err(|e| Failure::setup(format!("`{user}` not looked up: {e}")))?
        .ok_or_else(|| Failure::setup(format!("no identity source knows `{user}`")))
}

pub fn run(command: IdentityCommand) -> Result<ExitCode, Failure> {
    let IdentityCommand::Test(args) = command;
    let config = load_config(args.config.as_deref())?;
    let chain = chain(&config)?;
    let order = config.identity.order();
    println!("sources:  {}", order.join(", "));
    let password = password::read_existing(&args.user)?;
    let login = runtime()?
        .block_on(chain.login(&args.user, &password))
        .map_err(|e| Failure::setup(format!("login not checked: {e}")))?;
    let identity = match login {
        Login::Verified(identity) => identity,
        Login::Refused => {
            println!(
                "result:   refused: a source knows `{}`, the password is wrong",
                args.user
            );
            return Ok(ExitCode::from(1));
        }
        Login::Unknown => {
            println!("result:   refused: no source knows `{}`", args.user);
            return Ok(ExitCode::from(1));
        }
    };
    println!("result:   logged in");
    println!("source:   {}", identity.source);
    println!("user:     {}", identity.name);
    if let Some(dn) = &identity.dn {
        println!("dn:       {dn}");
    }
    if let Some(ldap) = config
        .identity
        .ldap
        .iter()
        .find(|l| l.name == identity.source)
    {
        println!("groups from: {}", groups_origin(ldap));
    }
    match identity.groups.is_empty() {
        true => println!("groups:   none"),
        false => println!("groups:   {}", identity.groups.join(", ")),
    }
    if let Some(repo) = &args.repo {
        let (policy, _) = Policy::load_configured(&config.policy.dir).map_err(Failure::setup)?;
        let caller = portcullis::auth::caller(Some(&identity), None);
        let decision = policy.decide(&caller, repo, &Action::ALL);
        let granted: Vec<&str> = decision.granted.iter().map(|a| a.as_str()).collect();
        println!(
            "{repo}: {}",
            match granted.is_empty() {
                true => "nothing granted".to_owned(),
                false => granted.join(", "),
            }
        );
        if let Some(rule) = decision.rule {
            println!("rule:     {rule}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a directory's groups come from, as its configuration says.
fn groups_origin(ldap: &LdapConfig) -> String {
    let g = &ldap.groups;
    let base = g.base.as_deref().unwrap_or(&ldap.user_base);
    let found = match g.from {
        GroupsFrom::None => return "none (groups.from = \"none\")".to_owned(),
        GroupsFrom::MemberOf => format!("the user's `{}` attribute", g.attribute),
        GroupsFrom::Search => format!("a search for {} under {base}", g.filter),
    };
    let nested = match g.nested {
        Nested::None => String::new(),
        Nested::InChain => format!(", nested by the in-chain rule under {base}"),
        Nested::Walk => format!(", nested by a walk of {} levels under {base}", g.max_depth),
    };
    let prefix = match g.prefix.is_empty() {
        true => String::new(),
        false => format!(", prefixed `{}`", g.prefix),
    };
    let allow = match g.allow.is_empty() {
        true => String::new(),
        false => format!(", only {}", g.allow.join(", ")),
    };
    format!("{found}{nested}{prefix}{allow}")
}
