//! `portcullis check-config [FILE]`: checks everything `serve` would load with
//! this configuration (without FILE, the one `serve` would choose) — the file itself, the policy (the files of
//! `policy.dir`, or the embedded default when it does not exist), the users
//! file, the key directory and the `[server.tls]` pair — so that "ok" means `serve` starts.
//!
//! Problems go to stderr, one per line as `file:line:col: message` (or
//! `file: message` when there is no single place), then a summary; what was
//! checked goes to stdout. Exit status 0 only when nothing is wrong, 2
//! otherwise.

use std::path::Path;
use std::process::ExitCode;

use portcullis::auth::keys::{KeyError, KeyRing};
use portcullis::auth::users::Users;
use portcullis::config::{ClientAuth, Config};
use portcullis::policy::{Policy, PolicyError, PolicySource};

/// What the check found, per file.
#[derive(Default)]
struct Report {
    /// `(file, problem lines)`, in the order checked.
    files: Vec<(String, Vec<String>)>,
}

impl Report {
    fn problem(&mut self, file: &Path, line: String) {
        let file = file.display().to_string();
        match self.files.iter_mut().find(|(f, _)| *f == file) {
            Some((_, lines)) => lines.push(line),
            None => self.files.push((file, vec![line])),
        }
    }

    fn count(&self) -> usize {
        self.files.iter().map(|(_, lines)| lines.len()).sum()
    }
}

pub fn run(file: Option<&Path>) -> ExitCode {
    let Some((file, _)) = super::config_file(file) else {
        // No file: what `serve` would load is the embedded default's
        // policy directory, users file and key directory.
        let mut report = Report::default();
        println!(
            "configuration: embedded default (no ./{})",
            super::LOCAL_CONFIG
        );
        check_loaded(&Config::default(), &mut report);
        return conclude(&report, "embedded default");
    };
    let file = file.as_path();
    let mut report = Report::default();
    match std::fs::read_to_string(file) {
        Err(e) => report.problem(file, format!("{}: cannot read: {e}", file.display())),
        Ok(text) => {
            let (config, problems) = Config::parse_lenient(&text);
            for problem in &problems {
                report.problem(file, problem.in_file(file));
            }
            match config {
                // With the values that could be read: one more round of
                // fixes spared, even if a bad path key means a default here.
                Some(config) => check_loaded(&config, &mut report),
                None => println!(
                    "policy, users and keys: not checked until the configuration parses (their places are in it)"
                ),
            }
        }
    }
    conclude(&report, &file.display().to_string())
}

/// Prints the problems and the summary, and gives the exit status.
fn conclude(report: &Report, checked: &str) -> ExitCode {
    let total = report.count();
    if total == 0 {
        println!("{checked}: ok, `serve` would start");
        return ExitCode::SUCCESS;
    }
    for (_, lines) in &report.files {
        for line in lines {
            eprintln!("{line}");
        }
    }
    for (file, lines) in &report.files {
        eprintln!("{file}: {}", plural(lines.len(), "problem"));
    }
    eprintln!(
        "check-config: {} in {}: `serve` would refuse to start",
        plural(total, "problem"),
        plural(report.files.len(), "file")
    );
    ExitCode::from(2)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn check_loaded(config: &Config, report: &mut Report) {
    if let Some(policy) = check_policy(&config.policy.dir, report) {
        check_policy_tests(config, &policy, report);
    }
    check_users(&config.users.file, report);
    check_keys(&config.token.key_dir, report);
    check_tls(config, report);
    check_directories(config, report);
    check_upstreams(config, report);
    check_storage(config, report);
    check_login(config, report);
    check_metrics(config, report);
    check_audit(config, report);
    check_log(config);
    check_notifications(config, report);
}

/// How `serve` would log (the level itself is checked with the file), and
/// whose request ids it would take.
fn check_log(config: &Config) {
    let log = &config.log;
    let ids = match log.request_id_from.as_slice() {
        [] => "its own request ids".to_owned(),
        nets => format!(
            "X-Request-Id taken from {}",
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    println!(
        "log: {} lines at `{}` on stderr, {ids}",
        log.format.as_str(),
        log.level
    );
}

/// What `serve` reads for each notification endpoint at start (its token
/// file), and where the queues go; the receivers are not contacted.
fn check_notifications(config: &Config, report: &mut Report) {
    let endpoints = &config.notifications.endpoints;
    if endpoints.is_empty() {
        return;
    }
    let dir = config.notifications.queue_dir(&config.storage.root);
    // `serve` creates it (and its parents): only something else in its
    // place stops it.
    match dir.ancestors().find(|d| d.exists()) {
        Some(there) if !there.is_dir() => report.problem(
            &dir,
            format!(
                "notifications.queue_dir {}: {} is not a directory",
                dir.display(),
                there.display()
            ),
        ),
        _ => println!("notifications: queues under {}", dir.display()),
    }
    for endpoint in endpoints {
        match portcullis::notify::deliver::Receiver::new(endpoint) {
            Ok(receiver) => println!(
                "notifications: `{}` gets {} of {} at {} (not contacted)",
                endpoint.name,
                endpoint.actions.join(", "),
                endpoint.repositories.join(", "),
                receiver.address(),
            ),
            Err(e) => report.problem(Path::new("notifications"), e),
        }
    }
}

/// Where the audit trail would go: stdout, or a file in a directory that
/// exists (`serve` creates the file, not its directory).
fn check_audit(config: &Config, report: &mut Report) {
    let Some(file) = &config.audit.file else {
        return;
    };
    if file == Path::new("-") {
        println!("audit: JSON lines to stdout");
        return;
    }
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        println!("audit: JSON lines appended to {}", file.display());
    } else {
        report.problem(
            file,
            format!(
                "audit.file {}: its directory does not exist",
                file.display()
            ),
        );
    }
}

/// The scrape token `serve` reads at start, when one is configured.
fn check_metrics(config: &Config, report: &mut Report) {
    if let Some(at) = config.metrics.listen {
        println!("metrics: /metrics on a listener of its own, http://{at}");
    }
    let Some(file) = &config.metrics.token_file else {
        return;
    };
    match portcullis::config::read_secret("metrics.token_file", file) {
        Ok(_) => println!("metrics: /metrics requires the token of {}", file.display()),
        Err(e) => report.problem(file, e),
    }
}

/// What `serve` reads for the sign-in page at start (the client secret's
/// file); the issuer is not contacted.
fn check_login(config: &Config, report: &mut Report) {
    let Some(login) = &config.login else {
        return;
    };
    match portcullis::api::login::SignInPage::new(login) {
        Ok(_) => println!(
            "login: sign-in page at /login through `{}` as client `{}` (not contacted)",
            login.issuer, login.client_id
        ),
        Err(e) => report.problem(Path::new("login"), e),
    }
}

/// What `serve` reads for each upstream at start (its account's password
/// file, its CA file); the upstream itself is not contacted.
fn check_upstreams(config: &Config, report: &mut Report) {
    for upstream in &config.upstream {
        match portcullis::api::upstream::Upstreams::new(std::slice::from_ref(upstream)) {
            Ok(_) => println!(
                "upstream: `{}` serves {}/** from {}{} (not contacted)",
                upstream.name,
                upstream.prefix,
                upstream.url,
                if upstream.cache.is_some() {
                    ", a pull-through cache"
                } else {
                    ""
                }
            ),
            Err(e) => report.problem(Path::new("upstream"), e),
        }
    }
}

/// What `serve` reads to open an S3 bucket (the secret key's file); the
/// store itself is not contacted.
fn check_storage(config: &Config, report: &mut Report) {
    let Some(s3) = &config.storage.s3 else {
        return;
    };
    match portcullis::storage::open::s3_options(s3) {
        Ok(options) => println!(
            "storage: S3 bucket `{}`{} at {} (not contacted)",
            options.bucket,
            if options.prefix.is_empty() {
                String::new()
            } else {
                format!(", under {}/", options.prefix)
            },
            options.endpoint.as_deref().unwrap_or("AWS"),
        ),
        Err(e) => report.problem(Path::new("storage"), e),
    }
}

/// What `serve` reads for each directory at start (the service password
/// file, the CA file); the directory itself is not contacted
/// (`portcullis identity test` does that).
fn check_directories(config: &Config, report: &mut Report) {
    for ldap in &config.identity.ldap {
        match portcullis::auth::identity::ldap::LdapSource::new(ldap) {
            Ok(_) => println!(
                "identity: directory `{}` at {} (not contacted)",
                ldap.name,
                ldap.urls.join(", ")
            ),
            Err(e) => report.problem(Path::new("identity"), e),
        }
    }
}

/// The TLS pair `serve` would load, when `[server.tls]` is set.
fn check_tls(config: &Config, report: &mut Report) {
    let Some(tls) = &config.server.tls else {
        return;
    };
    match portcullis::serve::tls::load_pair(tls) {
        Ok(_) => println!("tls: {} with {}", tls.cert.display(), tls.key.display()),
        Err(e) => report.problem(&tls.cert, e.to_string()),
    }
    if let Some(ca) = &tls.client_ca {
        match portcullis::serve::tls::load_client_verifier(ca, tls.client_auth) {
            Ok(_) => println!(
                "tls: client certificates {} against {}",
                match tls.client_auth {
                    ClientAuth::Optional => "accepted",
                    ClientAuth::Required => "required",
                },
                ca.display()
            ),
            Err(e) => report.problem(ca, e.to_string()),
        }
    }
}

/// The policy `serve` would run with, once reported; `None` when it does
/// not load (its problems reported).
fn check_policy(dir: &Path, report: &mut Report) -> Option<Policy> {
    match Policy::load_configured(dir) {
        Ok((policy, source)) => {
            match source {
                PolicySource::Dir(_) if policy.is_empty() => println!(
                    "policy: {source}: no rules, every request will be denied (`portcullis policy show`)"
                ),
                _ => println!(
                    "policy: {source}: {} (`portcullis policy show`)",
                    plural(policy.len(), "rule")
                ),
            }
            Some(policy)
        }
        Err(PolicyError::Invalid { problems }) => {
            for p in problems {
                report.problem(&p.file, p.to_string());
            }
            None
        }
        Err(PolicyError::Read { file, source }) => {
            report.problem(&file, format!("{}: cannot read: {source}", file.display()));
            None
        }
    }
}

/// The policy tests `policy.tests` names, run against the policy: a case
/// that fails is a problem, so a policy change is checked before it goes
/// live.
fn check_policy_tests(config: &Config, policy: &Policy, report: &mut Report) {
    if config.policy.tests.is_empty() {
        return;
    }
    let (mut cases, mut failed) = (0, 0);
    for file in &config.policy.tests {
        match portcullis::policy::cases::run_file(policy, file) {
            Ok(outcomes) => {
                for outcome in outcomes {
                    cases += 1;
                    if !outcome.passed() {
                        failed += 1;
                        report.problem(file, super::policy::failure_line(&outcome));
                    }
                }
            }
            Err(e) => report.problem(file, e.to_string()),
        }
    }
    if failed == 0 && cases > 0 {
        println!("policy tests: {} passed", plural(cases, "case"));
    }
}

fn check_users(file: &Path, report: &mut Report) {
    if !file.exists() {
        println!(
            "users: {} does not exist: no users yet (`portcullis user add NAME`)",
            file.display()
        );
        return;
    }
    match Users::load(file) {
        Ok(users) => println!("users: {}: {}", file.display(), plural(users.len(), "user")),
        Err(e) => report.problem(file, e.to_string()),
    }
}

fn check_keys(dir: &Path, report: &mut Report) {
    match KeyRing::load(dir) {
        Ok(keys) => println!(
            "keys: {}: {}, signing with {}",
            dir.display(),
            plural(keys.keys().len(), "key"),
            keys.signer().file.display()
        ),
        Err(KeyError::NoKey(_)) => println!(
            "keys: {}: no signing key yet: keys will be generated at first start",
            dir.display()
        ),
        Err(KeyError::Io { path, source })
            if path == dir && source.kind() == std::io::ErrorKind::NotFound =>
        {
            println!(
                "keys: {} does not exist: keys will be generated at first start",
                dir.display()
            )
        }
        Err(e) => report.problem(dir, e.to_string()),
    }
}
