//! The subcommands besides `serve`: the configuration check, users, keys,
//! policy, token revocation, the migration off v1, garbage collection and
//! the store's check. Each returns `Ok(exit code)` or a [`Failure`] that `main` prints.
//!
//! Standard output goes through [`write_stdout`]: `println!` and `print!`
//! are redefined below, before the submodules, so every command of this
//! module (and one added later) prints through it without a copy of its own.

/// `println!` for the commands: a closed standard output ends the command
/// quietly, as it ends `cat`, instead of panicking (std's `println!` panics
/// on `EPIPE`, so `portcullis keygen | head -1` printed a backtrace).
macro_rules! println {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the commands, as [`println!`] above.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

pub mod check;
pub mod gc;
pub mod identity;
pub mod keygen;
pub mod migrate;
mod password;
pub mod policy;
pub mod token;
pub mod users;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis::config::Config;

/// Why a command stopped, and with which exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// The command was refused or failed (status 1).
    pub fn refused(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }

    /// The command could not run: bad configuration or arguments (status 2,
    /// as for a usage error).
    pub fn setup(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }
}

/// Prints a failure and turns a result into the process status.
pub fn finish(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("portcullis: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Writes to standard output. When the reader has gone (`EPIPE`: `| head`
/// stopped reading), the process ends as coreutils' do: killed by `SIGPIPE`
/// where there are signals, so a pipeline sees the usual status 141 and no
/// message. Any other write error (a full disk behind `>`) is reported and
/// ends the command with status 1; a half-printed result must not look whole.
pub fn write_stdout(text: std::fmt::Arguments) {
    let Err(e) = std::io::stdout().lock().write_fmt(text) else {
        return;
    };
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        die_of_broken_pipe();
    }
    eprintln!("portcullis: cannot write to standard output: {e}");
    std::process::exit(1);
}

fn die_of_broken_pipe() -> ! {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal and raising it
    // on ourselves has no memory-safety preconditions; the process ends here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}

/// A runtime on every core, for the commands that walk or copy a whole
/// store (`migrate`, `gc`, `fsck`).
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::refused)
}

/// The storage the configuration names (or the filesystem under
/// `--data-dir` when given), for the commands that work on it beside (or
/// instead of) a running server.
pub async fn open_storage(
    config: &portcullis::config::StorageConfig,
    data_dir: Option<PathBuf>,
) -> Result<portcullis::storage::Storage, Failure> {
    let config = match data_dir {
        Some(root) => portcullis::config::StorageConfig {
            root,
            s3: None,
            ..config.clone()
        },
        None => config.clone(),
    };
    portcullis::storage::open::storage(&config)
        .await
        .map_err(Failure::refused)
}

/// Where the configuration came from, for `serve` to say at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE`, or the file `PORTCULLIS_CONFIG` names.
    Given(PathBuf),
    /// `./portcullis.toml`, found in the working directory.
    WorkingDirectory,
    /// None of those: the embedded default.
    Embedded,
}

/// The file looked for in the working directory when no configuration is given.
pub const LOCAL_CONFIG: &str = "portcullis.toml";

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Given(path) => write!(f, "{}", path.display()),
            Self::WorkingDirectory => write!(f, "./{LOCAL_CONFIG}"),
            Self::Embedded => write!(f, "embedded default (no ./{LOCAL_CONFIG})"),
        }
    }
}

/// The configuration every command runs with: the file given (`--config`),
/// else the file `PORTCULLIS_CONFIG` names, else `./portcullis.toml` when it
/// exists, else the embedded default. A broken `./portcullis.toml` is an
/// error like a broken `--config` file: skipping it would run with other
/// settings than the operator wrote.
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    load_config_from(path).map(|(config, _)| config)
}

/// The environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "PORTCULLIS_CONFIG";

/// As [`load_config`], also saying where the configuration came from.
pub fn load_config_from(path: Option<&Path>) -> Result<(Config, ConfigSource), Failure> {
    match config_file(path) {
        None => Ok((Config::default(), ConfigSource::Embedded)),
        Some((file, source)) => {
            let config = Config::load(&file).map_err(Failure::setup)?;
            Ok((config, source))
        }
    }
}

/// Which configuration file the choice of [`load_config`] lands on; `None`
/// for the embedded default.
pub fn config_file(path: Option<&Path>) -> Option<(PathBuf, ConfigSource)> {
    let from_env = std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match path.map(Path::to_owned).or(from_env) {
        Some(path) => Some((path.clone(), ConfigSource::Given(path))),
        None => {
            let local = Path::new(LOCAL_CONFIG);
            // Anything at that name counts, a dangling link too: a file the
            // operator put there but that cannot be read is an error when it
            // is loaded, not a reason to run with the default.
            std::fs::symlink_metadata(local).ok()?;
            Some((local.to_owned(), ConfigSource::WorkingDirectory))
        }
    }
}
