//! The subcommands besides `serve`: the configuration check, users, keys,
//! policy and token revocation. Each returns `Ok(exit code)` or a [`Failure`] that `main` prints.

pub mod check;
pub mod keygen;
mod password;
pub mod policy;
pub mod token;
pub mod users;

use std::path::Path;
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

/// The configuration file given, or the embedded default (the one `serve`
/// runs with when given none).
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(path) => Config::load(path).map_err(Failure::setup),
        None => Ok(Config::default()),
    }
}
