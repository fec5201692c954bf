//! The `portcullis` command line.

mod cli;

/// `eprintln!` that cannot panic: a server whose standard error went away
/// (a closed pipe, a stopped log collector) must keep serving, and a
/// message nobody can read is not worth a crash.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Registry front door and built-in OCI registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (with no options: 127.0.0.1:5000, data under ./data).
    Serve {
        /// Configuration file (TOML). Without it: the file `PORTCULLIS_CONFIG`
        /// names, else ./portcullis.toml if present, else the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Storage directory, overriding the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Runs an open registry: no tokens required, anyone may do
        /// anything (overrides `auth.enabled`). Only for a private loopback
        /// or a test.
        #[arg(long)]
        no_auth: bool,
        /// Serves HTTPS with this certificate chain (PEM), overriding
        /// `server.tls.cert`; reloaded when the file changes.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`, overriding `server.tls.key`.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Checks everything `serve` would load (configuration, policy, users,
    /// keys) and lists every problem with its file:line:col.
    CheckConfig {
        /// The configuration file (TOML) to check; without it, the one
        /// `serve` would read (`PORTCULLIS_CONFIG`, else `./portcullis.toml`,
        /// else the embedded default).
        file: Option<PathBuf>,
    },
    /// Manages the users file (TOML, argon2id password hashes).
    User {
        #[command(subcommand)]
        command: cli::users::UserCommand,
    },
    /// Token signing keys: a new one (on standby while another signs),
    /// `--activate`, `--retire` (key rotation, bundle first).
    Keygen(cli::keygen::KeygenArgs),
    /// Tests logins through the identity sources (users file, directories).
    Identity {
        #[command(subcommand)]
        command: cli::identity::IdentityCommand,
    },
    /// Inspects the access policy.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// Personal access tokens (create, list, revoke) and the revocation of
    /// refresh (identity) tokens.
    Token {
        #[command(subcommand)]
        command: cli::token::TokenCommand,
    },
    /// Copies a legacy v1 registry's repositories into the built-in v2
    /// storage as schema 2 images; resumable, and a second run copies
    /// nothing.
    Migrate(cli::migrate::MigrateArgs),
    /// Removes blobs and links no manifest references (and with
    /// `--delete-untagged`, manifests no tag reaches), while servers keep
    /// serving; `--dry-run` to see first.
    Gc(cli::gc::GcArgs),
    /// Checks every blob's digest and every link, tag and manifest;
    /// `--repair` removes what is broken.
    Fsck(cli::gc::FsckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            no_auth,
            tls_cert,
            tls_key,
        } => {
            let (mut config, source) = match cli::load_config_from(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(failure) => return cli::finish(Err(failure)),
            };
            let overrides = Overrides {
                listen,
                data_dir,
                no_auth,
                tls_pair: tls_cert.zip(tls_key),
            };
            overrides.apply(&mut config);
            serve(config, Rereader { source, overrides })
        }
        Command::CheckConfig { file } => cli::check::run(file.as_deref()),
        Command::User { command } => cli::finish(cli::users::run(command)),
        Command::Keygen(args) => cli::finish(cli::keygen::run(args)),
        Command::Identity { command } => cli::finish(cli::identity::run(command)),
        Command::Policy { command } => cli::finish(cli::policy::run(command)),
        Command::Token { command } => cli::finish(cli::token::run(command)),
        Command::Migrate(args) => cli::finish(cli::migrate::run(args)),
        Command::Gc(args) => cli::finish(cli::gc::run_gc(args)),
        Command::Fsck(args) => cli::finish(cli::gc::run_fsck(args)),
    }
}

/// What `serve`'s options put over the configuration file, at start and
/// on every reload (so a reload never reports them as changes).
struct Overrides {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    no_auth: bool,
    tls_pair: Option<(PathBuf, PathBuf)>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.storage.root = dir.clone();
        }
        if self.no_auth {
            config.auth.enabled = false;
        }
        if let Some((cert, key)) = &self.tls_pair {
            // The pair from the command line, the rest of [server.tls]
            // (redirect, client certificates) from the configuration.
            let mut tls =
                config.server.tls.take().unwrap_or_else(|| {
                    portcullis::config::TlsConfig::pair(cert.clone(), key.clone())
                });
            (tls.cert, tls.key) = (cert.clone(), key.clone());
            config.server.tls = Some(tls);
        }
    }
}

/// Reads the configuration `serve` started with again, for `SIGHUP` and
/// when the file changes: the same file (not a new search: a
/// `./portcullis.toml` created since does not replace the embedded
/// default), with the same overrides.
struct Rereader {
    source: cli::ConfigSource,
    overrides: Overrides,
}

impl Rereader {
    /// The file read at start; `None` for the embedded default.
    fn file(&self) -> Option<&std::path::Path> {
        match &self.source {
            cli::ConfigSource::Given(path) => Some(path.as_path()),
            cli::ConfigSource::WorkingDirectory => Some(std::path::Path::new(cli::LOCAL_CONFIG)),
            cli::ConfigSource::Embedded => None,
        }
    }

    /// `Ok(None)`: none was read at start.
    fn reread(&self) -> Result<Option<Config>, String> {
        let Some(file) = self.file() else {
            return Ok(None);
        };
        let mut config = Config::load(file).map_err(|e| e.to_string())?;
        self.overrides.apply(&mut config);
        Ok(Some(config))
    }
}

fn serve(config: Config, rereader: Rereader) -> ExitCode {
    tune_allocator();
    init_tracing(&config.log.level, config.log.format);
    tracing::info!("configuration: {}", rereader.source);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say!("portcullis: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, rereader)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps glibc's allocator from handing request buffers back to the kernel
/// after every use. An upload's body arrives in frames of a few hundred
/// KiB, each in a buffer of its own that lives until the frame is hashed and
/// copied; by default glibc serves such sizes with `mmap`, or trims its heap
/// as soon as 1 MiB or so at the top is free, so nearly every frame landed in
/// fresh pages that the kernel had to fault in and zero: measured on a 1 GiB
/// push, 117,000 page faults per GiB and about a sixth of the server's CPU
/// time. With buffers up to 4 MiB kept on the heap and up to 8 MiB of free
/// heap kept before trimming, the same push faults 4,000–14,000 times (the
/// more the hash lags, the more buffers are live at once); the memory kept
/// is a few MiB, once. Must run before other threads start (`mallopt`
/// is process-wide). Other allocators (musl's) are left as they are.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes plain integers and only changes allocator
    // parameters; no thread allocates concurrently this early.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

async fn run(config: Config, rereader: Rereader) -> Result<(), String> {
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Where the registry's content is, for the address line.
    let storage = match &config.storage.s3 {
        Some(s3) if s3.prefix.is_empty() => format!("s3://{}", s3.bucket),
        Some(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix.trim_matches('/')),
        None => config.storage.root.display().to_string(),
    };
    // The pair is loaded and the redirect port bound before the address is
    // announced: a bad certificate or a taken port fails the start.
    let https = match &config.server.tls {
        None => None,
        Some(files) => {
            let tls = portcullis::serve::tls::Tls::new(files).map_err(|e| e.to_string())?;
            let redirect = match files.redirect_http {
                None => None,
                Some(at) => Some(tokio::net::TcpListener::bind(at).await.map_err(|e| {
                    format!("cannot listen on {at} (server.tls.redirect_http): {e}")
                })?),
            };
            Some(portcullis::serve::Https { tls, redirect })
        }
    };
    let metrics = match config.metrics.listen {
        Some(at) if config.metrics.enabled => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("cannot listen on {at} (metrics.listen): {e}"))?,
        ),
        _ => None,
    };
    let scheme = if https.is_some() { "https" } else { "http" };
    let state = portcullis::AppState::new(config).await?;
    // Listen for signals before announcing the address: whoever reads that
    // line may signal at once, and a SIGTERM that arrived before the handler
    // existed would kill the process instead of stopping it gracefully.
    let shutdown = shutdown_signal().map_err(|e| format!("cannot handle signals: {e}"))?;
    // Likewise SIGHUP, whose default action would end the process.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups =
            signal(SignalKind::hangup()).map_err(|e| format!("cannot handle signals: {e}"))?;
        let tls = https.as_ref().map(|h| h.tls.clone());
        tokio::spawn(reload_on_signal_or_edit(
            hangups,
            Arc::downgrade(&state),
            tls,
            rereader,
        ));
    }
    #[cfg(not(unix))]
    drop(rereader);
    // Before the address line: whoever reads it may stop reading the log.
    match &state.auth {
        None => warn_open_registry(addr, scheme),
        Some(_) => tracing::info!("{}", trusting_registry_settings(&state.config, addr)),
    }
    // Scripts and tests read this line to learn the bound port (`--listen
    // 127.0.0.1:0`). A closed standard output is no reason to stop serving
    // (std's `println!` would panic): the log says where it listens too.
    if let Err(e) = writeln!(
        std::io::stdout(),
        "portcullis listening on {scheme}://{addr}"
    ) {
        tracing::warn!("cannot write the address to standard output: {e}");
    }
    if let Some(redirect) = https.as_ref().and_then(|h| h.redirect.as_ref()) {
        if let Ok(at) = redirect.local_addr() {
            tracing::info!(%at, "redirecting plain HTTP to HTTPS");
        }
    }
    if let Some(at) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
        // Read by tests and scripts, as the address line above.
        if let Err(e) = writeln!(
            std::io::stdout(),
            "portcullis metrics on http://{at}/metrics"
        ) {
            tracing::warn!("cannot write the metrics address to standard output: {e}");
        }
        tracing::info!(%at, "metrics on a listener of their own");
    }
    tracing::info!(%addr, %scheme, %storage, "listening");
    portcullis::serve::serve_with(listener, state, https, metrics, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

/// Says, on standard error whatever the log level and in the log, that
/// anyone who reaches the address may do anything: `--no-auth` and
/// `auth.enabled = false` are easy to leave on by mistake.
fn warn_open_registry(addr: SocketAddr, scheme: &str) {
    let reach = if addr.ip().is_loopback() {
        "anyone who can connect to this machine's loopback"
    } else {
        "ANYONE ON THE NETWORK who can reach this address (it is not a loopback address)"
    };
    say!(
        "portcullis: WARNING: authentication is disabled (--no-auth or auth.enabled = false).\n\
         portcullis: WARNING: {reach} may pull, push, overwrite and delete every repository at {scheme}://{addr}."
    );
    tracing::warn!(
        %addr,
        loopback = addr.ip().is_loopback(),
        "authentication is disabled: anyone who can reach this address may push, overwrite and delete anything"
    );
}

/// What a registry that trusts Portcullis' tokens (distribution's
/// `auth.token` section) must be configured with: the certificate bundle by
/// absolute path, since that registry runs elsewhere, and the names tokens carry.
fn trusting_registry_settings(config: &Config, addr: SocketAddr) -> String {
    let bundle = config.token.key_dir.join("bundle.crt");
    let bundle = std::path::absolute(&bundle).unwrap_or(bundle);
    let realm = match &config.server.public_url {
        Some(url) => format!("{}/token", url.trim_end_matches('/')),
        None if addr.ip().is_unspecified() => {
            format!(
                "{}://<this host>:{}/token",
                config.server.scheme(),
                addr.port()
            )
        }
        None => format!("{}://{addr}/token", config.server.scheme()),
    };
    format!(
        "registries that trust these tokens need auth.token.rootcertbundle = {}, issuer = {:?}, service = {:?}, realm = {realm:?}",
        bundle.display(),
        config.token.issuer,
        config.token.service,
    )
}

/// On every SIGHUP while the state lives, the watched files checked, and on
/// SIGHUP or when the configuration file changed (looked at every second),
/// the configuration read again ([`portcullis::reconfigure::hangup`]), off
/// the async threads; requests go on meanwhile. One task does both, so an
/// edit followed by a SIGHUP is read once: the second sees the file as the
/// first left it.
#[cfg(unix)]
async fn reload_on_signal_or_edit(
    mut hangups: tokio::signal::unix::Signal,
    state: std::sync::Weak<portcullis::AppState>,
    tls: Option<portcullis::serve::tls::Tls>,
    rereader: Rereader,
) {
    use portcullis::auth::reload::{CHECK_EVERY, Fingerprint};
    let rereader = Arc::new(rereader);
    let fingerprint = |r: &Rereader| r.file().map(Fingerprint::of_file);
    let mut seen = fingerprint(&rereader);
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = tokio::select! {
            signalled = hangups.recv() => match signalled {
                Some(()) => true,
                None => return,
            },
            _ = ticks.tick() => false,
        };
        let now = fingerprint(&rereader);
        let changed = now != seen;
        if !hangup && !changed {
            continue;
        }
        seen = now;
        let Some(state) = state.upgrade() else {
            return;
        };
        let (tls, rereader) = (tls.clone(), Arc::clone(&rereader));
        let done = tokio::task::spawn_blocking(move || {
            if hangup {
                tracing::info!("SIGHUP: checking the watched files");
            }
            match changed {
                true => {
                    tracing::info!("the configuration file changed: reading it again");
                    portcullis::reconfigure::hangup(&state, tls.as_ref(), rereader.reread());
                }
                false => portcullis::reconfigure::files(&state, tls.as_ref()),
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!("configuration reload failed: {e}");
        }
    }
}

/// Starts listening for SIGINT and SIGTERM now; the returned future resolves
/// on the first of them, and the server then stops accepting and lets
/// in-flight requests finish.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let signalled = {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
        }
    };
    #[cfg(not(unix))]
    let signalled = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Ok(async move {
        signalled.await;
        tracing::info!("shutting down, letting in-flight requests finish");
    })
}

/// Logs to stderr at `level` (`log.level`), or as `PORTCULLIS_LOG` says, in
/// `format` (`log.format`), or as `PORTCULLIS_LOG_FORMAT` says. A bad filter
/// or format is said on stderr rather than silently replaced: a person who
/// asked for `debug` and sees nothing needs to know why.
fn init_tracing(level: &str, format: LogFormat) {
    const FALLBACK: &str = "info";
    let level = match filter_problem(level) {
        None => level,
        Some(problem) => {
            say!("log.level: invalid filter {level:?}: {problem}; using {FALLBACK}");
            FALLBACK
        }
    };
    let directives = match std::env::var("PORTCULLIS_LOG") {
        Ok(value) if value.trim().is_empty() => level.to_owned(),
        Ok(value) => match filter_problem(&value) {
            None => value,
            Some(problem) => {
                say!("PORTCULLIS_LOG: invalid filter {value:?}: {problem}; using {level}");
                level.to_owned()
            }
        },
        Err(std::env::VarError::NotPresent) => level.to_owned(),
        Err(std::env::VarError::NotUnicode(_)) => {
            say!("PORTCULLIS_LOG: invalid filter: not UTF-8; using {level}");
            level.to_owned()
        }
    };
    // rustls warns once per handshake about things clients do harmlessly
    // (an IP address sent as the server name): one line per connection
    // would drown the log. A filter that names rustls itself decides.
    let directives = match directives.contains("rustls") {
        true => directives,
        false => format!("{directives},rustls=error"),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .with_writer(std::io::stderr)
        // On a failed write the subscriber would report it with
        // `eprintln!`, which panics when stderr is a closed pipe.
        .log_internal_errors(false);
    match log_format(format) {
        // Colour codes only help a person at a terminal; in files and
        // journals they are noise.
        LogFormat::Text => subscriber
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object a line: the event's fields beside `message`, and the
        // spans it is in (the request's, with its `request_id`, first) as a
        // list; the innermost span alone would hide the request's at
        // `debug`, where tower-http's span is inside it.
        LogFormat::Json => subscriber
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// `PORTCULLIS_LOG_FORMAT` (`text`, `json`) when set and valid, else
/// `configured`.
fn log_format(configured: LogFormat) -> LogFormat {
    match std::env::var("PORTCULLIS_LOG_FORMAT") {
        Ok(value) if value.trim().is_empty() => configured,
        Ok(value) => match value.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                say!(
                    "PORTCULLIS_LOG_FORMAT: {value:?} is not `text` or `json`; using {}",
                    configured.as_str()
                );
                configured
            }
        },
        Err(std::env::VarError::NotPresent) => configured,
        Err(std::env::VarError::NotUnicode(_)) => {
            say!(
                "PORTCULLIS_LOG_FORMAT: not UTF-8; using {}",
                configured.as_str()
            );
            configured
        }
    }
}

/// What is wrong with a log filter, if anything. Beyond the filter syntax, a
/// bare word must be a level: the syntax reads `verbose` or `infoo` as "every
/// level of the target so named", which silences the whole log, and nobody
/// means that (a target is written `target=level`).
fn filter_problem(filter: &str) -> Option<String> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(filter) {
        return Some(e.to_string());
    }
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains(['=', '[', ':']))
        .find(|d| d.parse::<tracing::level_filters::LevelFilter>().is_err())
        .map(|d| {
            format!(
                "`{d}` is not a level (trace, debug, info, warn, error, off; a target is `{d}=LEVEL`)"
            )
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand and argument `--help` lists says what it is for.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "portcullis", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
