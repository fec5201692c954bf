//! `portcullis policy explain`: what the policy decides for one caller and
//! one request, and which rule decides it; `policy show`: the rules in force.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use portcullis::auth::scope::Action;
use portcullis::policy::{Caller, Decision, Policy, PolicySource, cases};
use portcullis::reference::RepoName;

use super::{Failure, load_config};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Shows what a caller may do on a repository (or the catalog), and the
    /// rule that decides it.
    #[command(after_help = "\
Exit status: 0 when every requested action is allowed, 1 when any is denied,
2 when the configuration, the policy files or the arguments are invalid.

Examples:
  portcullis policy explain --user alice alice/app push
  portcullis policy explain --user bob --group admins library/nginx '*'
  portcullis policy explain --anonymous --from 10.1.2.3 public/tools pull
  portcullis policy explain --user alice --catalog")]
    Explain(ExplainArgs),
    /// Prints the policy in force: where it comes from (the policy
    /// directory, or the embedded default when that does not exist) and
    /// every rule in the order they are tried, with where it was written.
    Show(SourceArgs),
    /// Runs policy test files (tables of `[[case]]`: a caller, a request
    /// and the grant expected) against the policy, so that a change is
    /// checked in CI before it is deployed.
    #[command(after_help = "\
Exit status: 0 when every case passes, 1 when any fails, 2 when a file, the
configuration or the policy is invalid.

A case:
  [[case]]
  description = \"a pull request may not push production images\"
  user = \"bot\"                 # absent: an anonymous caller
  groups = [\"ci\"]
  from = \"10.0.0.7\"
  source = \"github\"            # the identity source that vouched
  claims = { ref = \"refs/pull/7/merge\" }
  repository = \"prod/app\"      # or: catalog = true
  actions = [\"pull\", \"push\"]   # asked for; \"*\" is all three
  expect = [\"pull\"]            # granted; [] when nothing is")]
    Test(TestArgs),
}

#[derive(Args)]
pub struct TestArgs {
    /// Test files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
}

/// Which policy: the configuration's directory, or another one.
#[derive(Args)]
pub struct SourceArgs {
    /// Configuration file; its `policy.dir` is the default directory.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory of policy files, overriding the configuration.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl SourceArgs {
    /// The policy `serve` would run with for these arguments.
    fn load(self) -> Result<(Policy, PolicySource), Failure> {
        let config = load_config(self.config.as_deref())?;
        let dir = self.dir.unwrap_or(config.policy.dir);
        Policy::load_configured(&dir).map_err(Failure::setup)
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("who").required(true).args(["user", "anonymous"])))]
pub struct ExplainArgs {
    /// The user asking.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A group of the user (repeat for several). Groups are not looked up
    /// unless --resolve is given: give the ones the user has.
    #[arg(
        long = "group",
        short = 'g',
        value_name = "GROUP",
        conflicts_with = "anonymous"
    )]
    groups: Vec<String>,
    /// Looks the user up through the identity sources (the users file,
    /// directories through their service account; no password) and adds
    /// the groups found to any --group.
    #[arg(long, requires = "user")]
    resolve: bool,
    /// Asks as an anonymous caller (no credentials).
    #[arg(long)]
    anonymous: bool,
    /// The client's address, for rules with `from` conditions.
    #[arg(long, value_name = "IP")]
    from: Option<IpAddr>,
    /// The identity source that vouched for the user (`file`, a
    /// directory's or an OpenID issuer's name), for rules with `sources`.
    #[arg(long = "identity-source", value_name = "NAME", requires = "user")]
    identity_source: Option<String>,
    /// A claim of the user's token, for rules with `claims` (repeat for
    /// several): `ref=refs/heads/main`.
    #[arg(long = "claim", value_name = "NAME=VALUE", requires = "identity_source", value_parser = claim_pair)]
    claims: Vec<(String, String)>,
    /// Explains listing the catalog (`/v2/_catalog`) instead of a repository.
    #[arg(long, conflicts_with_all = ["repo", "action"])]
    catalog: bool,
    /// The repository, e.g. `library/nginx`.
    #[arg(required_unless_present = "catalog")]
    repo: Option<String>,
    /// pull, push, delete or `*` (all three); several as `pull,push`.
    #[arg(required_unless_present = "catalog")]
    action: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(command: PolicyCommand) -> Result<ExitCode, Failure> {
    match command {
        PolicyCommand::Explain(args) => explain(args),
        PolicyCommand::Show(args) => {
            let (policy, source) = args.load()?;
            print!("{}", policy.show(&source));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test(args) => test(args),
    }
}

fn test(args: TestArgs) -> Result<ExitCode, Failure> {
    let (policy, source) = args.source.load()?;
    println!("policy: {source}");
    let (mut cases, mut failed) = (0, 0);
    for file in &args.files {
        let outcomes = cases::run_file(&policy, file).map_err(Failure::setup)?;
        for outcome in outcomes {
            cases += 1;
            if outcome.passed() {
                let by = decided_by(&outcome);
                println!(
                    "ok    {}  {}: {} ({by})",
                    outcome.at,
                    outcome.description,
                    cases::join(&outcome.granted)
                );
            } else {
                failed += 1;
                println!("FAIL  {}", failure_line(&outcome));
            }
        }
    }
    println!("{cases} cases: {} passed, {failed} failed", cases - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn decided_by(outcome: &cases::Outcome) -> String {
    match &outcome.rule {
        Some(rule) => format!("decided by {rule}"),
        None => "no rule matched".into(),
    }
}

/// A failed case as one line: where, what, expected and got, and the rule.
pub fn failure_line(outcome: &cases::Outcome) -> String {
    format!(
        "{}  {}: expected {}, got {} ({})",
        outcome.at,
        outcome.description,
        cases::join(&outcome.expected),
        cases::join(&outcome.granted),
        decided_by(outcome)
    )
}

fn explain(mut args: ExplainArgs) -> Result<ExitCode, Failure> {
    if args.resolve {
        let user = args.user.clone().unwrap_or_default();
        let config = load_config(args.source.config.as_deref())?;
        let identity = super::identity::resolve(&config, &user)?;
        eprintln!("note: {user} resolved by `{}`", identity.source);
        args.user = Some(identity.name);
        for group in identity.groups {
            if !args.groups.contains(&group) {
                args.groups.push(group);
            }
        }
    }
    let (policy, source) = args.source.load()?;
    match &source {
        PolicySource::Dir(dir) if policy.is_empty() => eprintln!(
            "note: no rules in {} (*.toml): everything is denied",
            dir.display()
        ),
        PolicySource::Embedded { .. } => eprintln!("note: using {source}"),
        PolicySource::Dir(_) => {}
    }
    let caller = Caller {
        user: args.user,
        groups: args.groups,
        addr: args.from,
        // A command runs once: the name may live as long as the process.
        source: args
            .identity_source
            .map(|s| &*Box::leak(s.into_boxed_str())),
        claims: args.claims.into_iter().collect(),
        narrowed: None,
    };
    let (request, wanted, decision) = if args.catalog {
        let decision = policy.decide_catalog(&caller);
        ("catalog listing".to_owned(), vec![Action::Pull], decision)
    } else {
        let (Some(repo), Some(action)) = (args.repo, args.action) else {
            return Err(Failure::setup("give REPO and ACTION, or --catalog"));
        };
        RepoName::parse(&repo)
            .map_err(|_| Failure::setup(format!("`{repo}` is not a valid repository name")))?;
        let wanted = parse_actions(&action)?;
        let decision = policy.decide(&caller, &repo, &wanted);
        let names: Vec<&str> = wanted.iter().map(|a| a.as_str()).collect();
        (format!("{} on {repo}", names.join(", ")), wanted, decision)
    };
    print!(
        "{}",
        report(&caller, &request, &wanted, &decision, args.catalog)
    );
    let allowed = wanted.iter().all(|a| decision.granted.contains(a));
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `pull`, `push`, `delete`, `*`, or a comma-separated list of them.
fn parse_actions(text: &str) -> Result<Vec<Action>, Failure> {
    let mut actions = Vec::new();
    for part in text.split(',') {
        match part.trim() {
            "*" => actions.extend(Action::ALL),
            name => actions.push(Action::parse(name).ok_or_else(|| {
                Failure::setup(format!("unknown action `{name}` (pull, push, delete or *)"))
            })?),
        }
    }
    actions.sort();
    actions.dedup();
    Ok(actions)
}

fn report(
    caller: &Caller,
    request: &str,
    wanted: &[Action],
    decision: &Decision,
    catalog: bool,
) -> String {
    let list = |actions: &[Action]| {
        if actions.is_empty() {
            "nothing".to_owned()
        } else {
            actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut who = match &caller.user {
        Some(user) if caller.groups.is_empty() => user.clone(),
        Some(user) => format!("{user} (groups: {})", caller.groups.join(", ")),
        None => "anonymous".to_owned(),
    };
    if let Some(addr) = caller.addr {
        who.push_str(&format!(" from {addr}"));
    }
    let refused: Vec<Action> = wanted
        .iter()
        .copied()
        .filter(|a| !decision.granted.contains(a))
        .collect();
    let verdict = if refused.is_empty() {
        "allowed"
    } else {
        "denied"
    };
    let mut out = format!("caller:   {who}\nrequest:  {request}\ndecision: {verdict}\n");
    // The catalog is allowed or not; it has no actions to list.
    if !catalog {
        out.push_str(&format!("granted:  {}\n", list(&decision.granted)));
    }
    if !catalog && !refused.is_empty() {
        out.push_str(&format!("refused:  {}\n", list(&refused)));
    }
    match &decision.rule {
        Some(rule) => out.push_str(&format!("rule:     {rule}\n")),
        None => out.push_str("rule:     no rule matched: denied by default\n"),
    }
    out
}

fn claim_pair(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{arg}`: write a claim as NAME=VALUE"))
}
